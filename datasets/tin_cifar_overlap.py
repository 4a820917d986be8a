"""The Tiny ImageNet classes left out of the OOD set TinyImageNet (datasets/shared_archives.py) because
they are, or could be taken for, a class of CIFAR-10 or CIFAR-100.

OpenOOD v1.5 uses Tiny ImageNet as a near-OOD set of both CIFAR benchmarks after removing the classes
that overlap either; one list serves both ID sets here too. It was decided by reading the words of each
of the 202 classes of the shared archive (its classes.tsv) against the 10 CIFAR-10 names and the 100
CIFAR-100 fine class names. A class is left out when it is a CIFAR class or a kind of one (a goose is a
bird, a limousine an automobile), or when it could be taken for one ("in doubt": a gazelle for a deer, a
lemon for an orange); in doubt, it is left out.

Kept after some thought (no CIFAR class, though near one): scorpion and centipede (no spider, worm or
lobster), fly, dragonfly (whose folk names "snake feeder" and "snake doctor" name no snake), mantis,
grasshopper and walking stick (no CIFAR insect), hog (CIFAR-100 has no pig), sea cucumber (an animal, not
the scene "sea"), trilobite, brain coral, crane (the machine:
n03126707, not the bird), beaker, bucket, barrel, water jug, wok, frying pan and teapot (no bottle, bowl,
can, cup or plate), chest and refrigerator (no wardrobe), hourglass and magnetic compass (no clock),
iPod and remote control (no telephone), rickshaw (no bicycle), acorn (no oak tree), and the garments
(academic gown, apron, bikini, kimono, military uniform, ...): people wear them in the photos, but the
class is the garment, not CIFAR-100's man, woman, boy, girl or baby.
"""

# wnid -> its words (from classes.tsv), then the CIFAR class it is or could be taken for
CIFAR_OVERLAP = {
    # animals
    "n01443537": "goldfish: CIFAR-100 aquarium_fish",
    "n01629819": "European fire salamander: CIFAR-100 lizard (in doubt: an amphibian that looks like one)",
    "n01641577": "bullfrog: CIFAR-10 frog",
    "n01644900": "tailed frog: CIFAR-10 frog",
    "n01698640": "American alligator: CIFAR-100 crocodile",
    "n01742172": "boa constrictor: CIFAR-100 snake",
    "n01774384": "black widow: CIFAR-100 spider",
    "n01774750": "tarantula: CIFAR-100 spider",
    "n01855672": "goose: CIFAR-10 bird",
    "n01882714": "koala, koala bear: CIFAR-100 bear, possum (in doubt: no bear, but named one, a marsupial)",
    "n01944390": "snail: CIFAR-100 snail",
    "n01945685": "slug: CIFAR-100 snail, worm (in doubt: a snail without a shell)",
    "n01950731": "sea slug: CIFAR-100 snail (in doubt: a marine snail without a shell)",
    "n01983481": "American lobster: CIFAR-100 lobster",
    "n01984695": "spiny lobster, crayfish: CIFAR-100 lobster",
    "n02002724": "black stork: CIFAR-10 bird",
    "n02056570": "king penguin: CIFAR-10 bird",
    "n02058221": "albatross: CIFAR-10 bird",
    "n02074367": "dugong: CIFAR-100 seal, whale, dolphin (in doubt: an aquatic mammal like them)",
    "n02085620": "Chihuahua: CIFAR-10 dog",
    "n02094433": "Yorkshire terrier: CIFAR-10 dog",
    "n02099601": "golden retriever: CIFAR-10 dog",
    "n02099712": "Labrador retriever: CIFAR-10 dog",
    "n02106662": "German shepherd: CIFAR-10 dog (and CIFAR-100 wolf)",
    "n02113799": "standard poodle: CIFAR-10 dog",
    "n02123045": "tabby cat: CIFAR-10 cat",
    "n02123394": "Persian cat: CIFAR-10 cat",
    "n02124075": "Egyptian cat: CIFAR-10 cat",
    "n02125311": "cougar, puma, panther: CIFAR-10 cat (a felid), CIFAR-100 lion, leopard, tiger",
    "n02129165": "lion: CIFAR-100 lion",
    "n02132136": "brown bear: CIFAR-100 bear",
    "n02165456": "ladybug, ladybird beetle: CIFAR-100 beetle",
    "n02206856": "bee: CIFAR-100 bee",
    "n02233338": "cockroach: CIFAR-100 cockroach",
    "n02279972": "monarch butterfly: CIFAR-100 butterfly",
    "n02281406": "sulphur butterfly: CIFAR-100 butterfly",
    "n02364673": "guinea pig: CIFAR-100 hamster (in doubt: a rodent that looks like one)",
    "n02403003": "ox: CIFAR-100 cattle",
    "n02410509": "bison: CIFAR-100 cattle",
    "n02415577": "bighorn sheep: CIFAR-10 deer, CIFAR-100 cattle (in doubt: a horned wild ungulate)",
    "n02423022": "gazelle: CIFAR-10 deer (in doubt: an antelope that looks like one)",
    "n02437312": "Arabian camel: CIFAR-100 camel",
    "n02480495": "orangutan: CIFAR-100 chimpanzee (in doubt: a great ape)",
    "n02480855": "gorilla: CIFAR-100 chimpanzee (in doubt: a great ape)",
    "n02481823": "chimpanzee: CIFAR-100 chimpanzee",
    "n02486410": "baboon: CIFAR-100 chimpanzee (in doubt: a primate)",
    "n02504458": "African elephant: CIFAR-100 elephant",
    "n02509815": "lesser panda, bear cat: CIFAR-100 raccoon, bear; CIFAR-10 cat (in doubt: named after both)",
    # vehicles
    "n02814533": "beach wagon, station wagon, estate car: CIFAR-10 automobile",
    "n02917067": "bullet train: CIFAR-100 train",
    "n03100240": "convertible: CIFAR-10 automobile",
    "n03393912": "freight car: CIFAR-100 train",
    "n03444034": "go-kart: CIFAR-10 automobile (in doubt: a small car)",
    "n03447447": "gondola: CIFAR-10 ship (a boat)",
    "n03649909": "lawn mower: CIFAR-100 lawn_mower",
    "n03662601": "lifeboat: CIFAR-10 ship (a boat)",
    "n03670208": "limousine: CIFAR-10 automobile",
    "n03796401": "moving van: CIFAR-10 truck",
    "n03977966": "police van, police wagon: CIFAR-10 truck, automobile",
    "n04008634": "projectile, missile: CIFAR-100 rocket",
    "n04146614": "school bus: CIFAR-100 bus",
    "n04285008": "sports car: CIFAR-10 automobile",
    "n04465501": "tractor: CIFAR-100 tractor",
    "n04487081": "trolleybus: CIFAR-100 streetcar, bus",
    # buildings and structures
    "n02793495": "barn: CIFAR-100 house (in doubt: a farm building)",
    "n02843684": "birdhouse: CIFAR-10 bird, CIFAR-100 house (in doubt: named after both, birds in the photos)",
    "n03042490": "cliff dwelling: CIFAR-100 house (in doubt: dwellings in a rock face)",
    "n04311004": "steel arch bridge: CIFAR-100 bridge",
    "n04366367": "suspension bridge: CIFAR-100 bridge",
    "n04417672": "thatch, thatched roof: CIFAR-100 house (in doubt: the photos are of houses)",
    "n04532670": "viaduct: CIFAR-100 bridge (a bridge of many spans)",
    # household objects
    "n02823428": "beer bottle: CIFAR-100 bottle",
    "n03085013": "computer keyboard: CIFAR-100 keyboard",
    "n03179701": "desk: CIFAR-100 table (in doubt: a kind of table)",
    "n03201208": "dining table: CIFAR-100 table",
    "n03637318": "lampshade: CIFAR-100 lamp",
    "n03902125": "pay-phone: CIFAR-100 telephone",
    "n03937543": "pill bottle: CIFAR-100 bottle",
    "n03983396": "pop bottle, soda bottle: CIFAR-100 bottle",
    "n04099969": "rocking chair: CIFAR-100 chair",
    "n04275548": "spider web: CIFAR-100 spider (in doubt: named after one, spiders in the photos)",
    "n04328186": "stopwatch: CIFAR-100 clock (in doubt: a timepiece with a dial)",
    "n04399382": "teddy bear: CIFAR-100 bear (in doubt: a toy bear)",
    "n07579787": "plate: CIFAR-100 plate",
    # food
    "n07720875": "bell pepper: CIFAR-100 sweet_pepper",
    "n07734744": "mushroom: CIFAR-100 mushroom",
    "n07747607": "orange: CIFAR-100 orange",
    "n07749582": "lemon: CIFAR-100 orange, pear (in doubt: a citrus fruit)",
    "n07768694": "pomegranate: CIFAR-100 apple (in doubt: a round red fruit)",
    "n07920052": "espresso: CIFAR-100 cup (in doubt: served in one)",
    # scenes and people
    "n09193705": "alp: CIFAR-100 mountain",
    "n09246464": "cliff: CIFAR-100 mountain (in doubt: a rock face)",
    "n09256479": "coral reef: CIFAR-100 sea (in doubt: an underwater sea scene)",
    "n09332890": "lakeside: CIFAR-100 sea, plain, forest (in doubt: a water scene)",
    "n09428293": "seashore: CIFAR-100 sea",
    "n10148035": "groom, bridegroom: CIFAR-100 man",
}
