"""Reports and tables read from what the stages wrote (train.py's final metrics, eval.py's result
files): the record and report of scripts/reproduce_small.sh, the table of scripts/dfb_ablation.sh and
the spread of the demo over runs. Each module is a command, `python -m reporting.<module>`."""
