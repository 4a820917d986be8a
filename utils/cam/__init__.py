"""Stage 2, make_cam.py: pseudo masks from the trained classifier's class activation maps.
``activation_maps`` holds the pure tensor functions (multi-scale CAMs, blur, threshold, masks),
``main`` the driver that writes the mask folders."""
