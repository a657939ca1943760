"""Class names of the TPT/DiffTPT test sets, in the reference label order.

Data, not code: the ten fine-grained lists equal azshue/TPT@63ecbace ``data/cls_to_names.py`` (MIT licence,
Copyright (c) 2022 Manli Shu; the lists derive from CoOp's dataset splits, KaiyangZhou/CoOp), order included; they
are stored here as ``|``-separated strings. Underscores are kept (they become spaces when prompts are built).
ImageNet names are open_clip's ``IMAGENET_CLASSNAMES`` (identical to TPT's ``imagenet_classes``, the CLIP
notebook's cleaned list); the 1000 WordNet ids and the ImageNet-A / -R 200-class subsets are timm's shipped
``timm/data/_info`` files (identical to TPT's ``imagenet_a_mask`` / ``imagenet_r_mask``).
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = [
    "FINE_GRAINED",
    "classnames",
    "imagenet_classnames",
    "imagenet_wnids",
    "imagenet_subset_indices",
    "imagenet_subset_wnids",
    "imagenet_v2_label_order",
]

_LISTS = {
    "flower102": (
        "pink primrose|hard-leaved pocket orchid|canterbury bells|sweet pea|english marigold|tiger lily|m"
        "oon orchid|bird of paradise|monkshood|globe thistle|snapdragon|colt's foot|king protea|spear thi"
        "stle|yellow iris|globe-flower|purple coneflower|peruvian lily|balloon flower|giant white arum li"
        "ly|fire lily|pincushion flower|fritillary|red ginger|grape hyacinth|corn poppy|prince of wales f"
        "eathers|stemless gentian|artichoke|sweet william|carnation|garden phlox|love in the mist|mexican"
        " aster|alpine sea holly|ruby-lipped cattleya|cape flower|great masterwort|siam tulip|lenten rose"
        "|barbeton daisy|daffodil|sword lily|poinsettia|bolero deep blue|wallflower|marigold|buttercup|ox"
        "eye daisy|common dandelion|petunia|wild pansy|primula|sunflower|pelargonium|bishop of llandaff|g"
        "aura|geranium|orange dahlia|pink-yellow dahlia|cautleya spicata|japanese anemone|black-eyed susa"
        "n|silverbush|californian poppy|osteospermum|spring crocus|bearded iris|windflower|tree poppy|gaz"
        "ania|azalea|water lily|rose|thorn apple|morning glory|passion flower|lotus|toad lily|anthurium|f"
        "rangipani|clematis|hibiscus|columbine|desert-rose|tree mallow|magnolia|cyclamen|watercress|canna"
        " lily|hippeastrum|bee balm|ball moss|foxglove|bougainvillea|camellia|mallow|mexican petunia|brom"
        "elia|blanket flower|trumpet creeper|blackberry lily"
    ),
    "dtd": (
        "banded|blotchy|braided|bubbly|bumpy|chequered|cobwebbed|cracked|crosshatched|crystalline|dotted|"
        "fibrous|flecked|freckled|frilly|gauzy|grid|grooved|honeycombed|interlaced|knitted|lacelike|lined"
        "|marbled|matted|meshed|paisley|perforated|pitted|pleated|polka-dotted|porous|potholed|scaly|smea"
        "red|spiralled|sprinkled|stained|stratified|striped|studded|swirly|veined|waffled|woven|wrinkled|"
        "zigzagged"
    ),
    "pets": (
        "abyssinian|american_bulldog|american_pit_bull_terrier|basset_hound|beagle|bengal|birman|bombay|b"
        "oxer|british_shorthair|chihuahua|egyptian_mau|english_cocker_spaniel|english_setter|german_short"
        "haired|great_pyrenees|havanese|japanese_chin|keeshond|leonberger|maine_coon|miniature_pinscher|n"
        "ewfoundland|persian|pomeranian|pug|ragdoll|russian_blue|saint_bernard|samoyed|scottish_terrier|s"
        "hiba_inu|siamese|sphynx|staffordshire_bull_terrier|wheaten_terrier|yorkshire_terrier"
    ),
    "cars": (
        "2000 AM General Hummer SUV|2012 Acura RL Sedan|2012 Acura TL Sedan|2008 Acura TL Type-S|2012 Acu"
        "ra TSX Sedan|2001 Acura Integra Type R|2012 Acura ZDX Hatchback|2012 Aston Martin V8 Vantage Con"
        "vertible|2012 Aston Martin V8 Vantage Coupe|2012 Aston Martin Virage Convertible|2012 Aston Mart"
        "in Virage Coupe|2008 Audi RS 4 Convertible|2012 Audi A5 Coupe|2012 Audi TTS Coupe|2012 Audi R8 C"
        "oupe|1994 Audi V8 Sedan|1994 Audi 100 Sedan|1994 Audi 100 Wagon|2011 Audi TT Hatchback|2011 Audi"
        " S6 Sedan|2012 Audi S5 Convertible|2012 Audi S5 Coupe|2012 Audi S4 Sedan|2007 Audi S4 Sedan|2012"
        " Audi TT RS Coupe|2012 BMW ActiveHybrid 5 Sedan|2012 BMW 1 Series Convertible|2012 BMW 1 Series "
        "Coupe|2012 BMW 3 Series Sedan|2012 BMW 3 Series Wagon|2007 BMW 6 Series Convertible|2007 BMW X5 "
        "SUV|2012 BMW X6 SUV|2012 BMW M3 Coupe|2010 BMW M5 Sedan|2010 BMW M6 Convertible|2012 BMW X3 SUV|"
        "2012 BMW Z4 Convertible|2012 Bentley Continental Supersports Conv. Convertible|2009 Bentley Arna"
        "ge Sedan|2011 Bentley Mulsanne Sedan|2012 Bentley Continental GT Coupe|2007 Bentley Continental "
        "GT Coupe|2007 Bentley Continental Flying Spur Sedan|2009 Bugatti Veyron 16.4 Convertible|2009 Bu"
        "gatti Veyron 16.4 Coupe|2012 Buick Regal GS|2007 Buick Rainier SUV|2012 Buick Verano Sedan|2012 "
        "Buick Enclave SUV|2012 Cadillac CTS-V Sedan|2012 Cadillac SRX SUV|2007 Cadillac Escalade EXT Cre"
        "w Cab|2012 Chevrolet Silverado 1500 Hybrid Crew Cab|2012 Chevrolet Corvette Convertible|2012 Che"
        "vrolet Corvette ZR1|2007 Chevrolet Corvette Ron Fellows Edition Z06|2012 Chevrolet Traverse SUV|"
        "2012 Chevrolet Camaro Convertible|2010 Chevrolet HHR SS|2007 Chevrolet Impala Sedan|2012 Chevrol"
        "et Tahoe Hybrid SUV|2012 Chevrolet Sonic Sedan|2007 Chevrolet Express Cargo Van|2012 Chevrolet A"
        "valanche Crew Cab|2010 Chevrolet Cobalt SS|2010 Chevrolet Malibu Hybrid Sedan|2009 Chevrolet Tra"
        "ilBlazer SS|2012 Chevrolet Silverado 2500HD Regular Cab|2007 Chevrolet Silverado 1500 Classic Ex"
        "tended Cab|2007 Chevrolet Express Van|2007 Chevrolet Monte Carlo Coupe|2007 Chevrolet Malibu Sed"
        "an|2012 Chevrolet Silverado 1500 Extended Cab|2012 Chevrolet Silverado 1500 Regular Cab|2009 Chr"
        "ysler Aspen SUV|2010 Chrysler Sebring Convertible|2012 Chrysler Town and Country Minivan|2010 Ch"
        "rysler 300 SRT-8|2008 Chrysler Crossfire Convertible|2008 Chrysler PT Cruiser Convertible|2002 D"
        "aewoo Nubira Wagon|2012 Dodge Caliber Wagon|2007 Dodge Caliber Wagon|1997 Dodge Caravan Minivan|"
        "2010 Dodge Ram Pickup 3500 Crew Cab|2009 Dodge Ram Pickup 3500 Quad Cab|2009 Dodge Sprinter Carg"
        "o Van|2012 Dodge Journey SUV|2010 Dodge Dakota Crew Cab|2007 Dodge Dakota Club Cab|2008 Dodge Ma"
        "gnum Wagon|2011 Dodge Challenger SRT8|2012 Dodge Durango SUV|2007 Dodge Durango SUV|2012 Dodge C"
        "harger Sedan|2009 Dodge Charger SRT-8|1998 Eagle Talon Hatchback|2012 FIAT 500 Abarth|2012 FIAT "
        "500 Convertible|2012 Ferrari FF Coupe|2012 Ferrari California Convertible|2012 Ferrari 458 Itali"
        "a Convertible|2012 Ferrari 458 Italia Coupe|2012 Fisker Karma Sedan|2012 Ford F-450 Super Duty C"
        "rew Cab|2007 Ford Mustang Convertible|2007 Ford Freestar Minivan|2009 Ford Expedition EL SUV|201"
        "2 Ford Edge SUV|2011 Ford Ranger SuperCab|2006 Ford GT Coupe|2012 Ford F-150 Regular Cab|2007 Fo"
        "rd F-150 Regular Cab|2007 Ford Focus Sedan|2012 Ford E-Series Wagon Van|2012 Ford Fiesta Sedan|2"
        "012 GMC Terrain SUV|2012 GMC Savana Van|2012 GMC Yukon Hybrid SUV|2012 GMC Acadia SUV|2012 GMC C"
        "anyon Extended Cab|1993 Geo Metro Convertible|2010 HUMMER H3T Crew Cab|2009 HUMMER H2 SUT Crew C"
        "ab|2012 Honda Odyssey Minivan|2007 Honda Odyssey Minivan|2012 Honda Accord Coupe|2012 Honda Acco"
        "rd Sedan|2012 Hyundai Veloster Hatchback|2012 Hyundai Santa Fe SUV|2012 Hyundai Tucson SUV|2012 "
        "Hyundai Veracruz SUV|2012 Hyundai Sonata Hybrid Sedan|2007 Hyundai Elantra Sedan|2012 Hyundai Ac"
        "cent Sedan|2012 Hyundai Genesis Sedan|2012 Hyundai Sonata Sedan|2012 Hyundai Elantra Touring Hat"
        "chback|2012 Hyundai Azera Sedan|2012 Infiniti G Coupe IPL|2011 Infiniti QX56 SUV|2008 Isuzu Asce"
        "nder SUV|2012 Jaguar XK XKR|2012 Jeep Patriot SUV|2012 Jeep Wrangler SUV|2012 Jeep Liberty SUV|2"
        "012 Jeep Grand Cherokee SUV|2012 Jeep Compass SUV|2008 Lamborghini Reventon Coupe|2012 Lamborghi"
        "ni Aventador Coupe|2012 Lamborghini Gallardo LP 570-4 Superleggera|2001 Lamborghini Diablo Coupe"
        "|2012 Land Rover Range Rover SUV|2012 Land Rover LR2 SUV|2011 Lincoln Town Car Sedan|2012 MINI C"
        "ooper Roadster Convertible|2012 Maybach Landaulet Convertible|2011 Mazda Tribute SUV|2012 McLare"
        "n MP4-12C Coupe|1993 Mercedes-Benz 300-Class Convertible|2012 Mercedes-Benz C-Class Sedan|2009 M"
        "ercedes-Benz SL-Class Coupe|2012 Mercedes-Benz E-Class Sedan|2012 Mercedes-Benz S-Class Sedan|20"
        "12 Mercedes-Benz Sprinter Van|2012 Mitsubishi Lancer Sedan|2012 Nissan Leaf Hatchback|2012 Nissa"
        "n NV Passenger Van|2012 Nissan Juke Hatchback|1998 Nissan 240SX Coupe|1999 Plymouth Neon Coupe|2"
        "012 Porsche Panamera Sedan|2012 Ram C/V Cargo Van Minivan|2012 Rolls-Royce Phantom Drophead Coup"
        "e Convertible|2012 Rolls-Royce Ghost Sedan|2012 Rolls-Royce Phantom Sedan|2012 Scion xD Hatchbac"
        "k|2009 Spyker C8 Convertible|2009 Spyker C8 Coupe|2007 Suzuki Aerio Sedan|2012 Suzuki Kizashi Se"
        "dan|2012 Suzuki SX4 Hatchback|2012 Suzuki SX4 Sedan|2012 Tesla Model S Sedan|2012 Toyota Sequoia"
        " SUV|2012 Toyota Camry Sedan|2012 Toyota Corolla Sedan|2012 Toyota 4Runner SUV|2012 Volkswagen G"
        "olf Hatchback|1991 Volkswagen Golf Hatchback|2012 Volkswagen Beetle Hatchback|2012 Volvo C30 Hat"
        "chback|1993 Volvo 240 Sedan|2007 Volvo XC90 SUV|2012 smart fortwo Convertible"
    ),
    "ucf101": (
        "Apply_Eye_Makeup|Apply_Lipstick|Archery|Baby_Crawling|Balance_Beam|Band_Marching|Baseball_Pitch|"
        "Basketball|Basketball_Dunk|Bench_Press|Biking|Billiards|Blow_Dry_Hair|Blowing_Candles|Body_Weigh"
        "t_Squats|Bowling|Boxing_Punching_Bag|Boxing_Speed_Bag|Breast_Stroke|Brushing_Teeth|Clean_And_Jer"
        "k|Cliff_Diving|Cricket_Bowling|Cricket_Shot|Cutting_In_Kitchen|Diving|Drumming|Fencing|Field_Hoc"
        "key_Penalty|Floor_Gymnastics|Frisbee_Catch|Front_Crawl|Golf_Swing|Haircut|Hammering|Hammer_Throw"
        "|Handstand_Pushups|Handstand_Walking|Head_Massage|High_Jump|Horse_Race|Horse_Riding|Hula_Hoop|Ic"
        "e_Dancing|Javelin_Throw|Juggling_Balls|Jumping_Jack|Jump_Rope|Kayaking|Knitting|Long_Jump|Lunges"
        "|Military_Parade|Mixing|Mopping_Floor|Nunchucks|Parallel_Bars|Pizza_Tossing|Playing_Cello|Playin"
        "g_Daf|Playing_Dhol|Playing_Flute|Playing_Guitar|Playing_Piano|Playing_Sitar|Playing_Tabla|Playin"
        "g_Violin|Pole_Vault|Pommel_Horse|Pull_Ups|Punch|Push_Ups|Rafting|Rock_Climbing_Indoor|Rope_Climb"
        "ing|Rowing|Salsa_Spin|Shaving_Beard|Shotput|Skate_Boarding|Skiing|Skijet|Sky_Diving|Soccer_Juggl"
        "ing|Soccer_Penalty|Still_Rings|Sumo_Wrestling|Surfing|Swing|Table_Tennis_Shot|Tai_Chi|Tennis_Swi"
        "ng|Throw_Discus|Trampoline_Jumping|Typing|Uneven_Bars|Volleyball_Spiking|Walking_With_Dog|Wall_P"
        "ushups|Writing_On_Board|Yo_Yo"
    ),
    "caltech101": (
        "face|leopard|motorbike|accordion|airplane|anchor|ant|barrel|bass|beaver|binocular|bonsai|brain|b"
        "rontosaurus|buddha|butterfly|camera|cannon|car_side|ceiling_fan|cellphone|chair|chandelier|couga"
        "r_body|cougar_face|crab|crayfish|crocodile|crocodile_head|cup|dalmatian|dollar_bill|dolphin|drag"
        "onfly|electric_guitar|elephant|emu|euphonium|ewer|ferry|flamingo|flamingo_head|garfield|gerenuk|"
        "gramophone|grand_piano|hawksbill|headphone|hedgehog|helicopter|ibis|inline_skate|joshua_tree|kan"
        "garoo|ketch|lamp|laptop|llama|lobster|lotus|mandolin|mayfly|menorah|metronome|minaret|nautilus|o"
        "ctopus|okapi|pagoda|panda|pigeon|pizza|platypus|pyramid|revolver|rhino|rooster|saxophone|schoone"
        "r|scissors|scorpion|sea_horse|snoopy|soccer_ball|stapler|starfish|stegosaurus|stop_sign|strawber"
        "ry|sunflower|tick|trilobite|umbrella|watch|water_lilly|wheelchair|wild_cat|windsor_chair|wrench|"
        "yin_yang"
    ),
    "food101": (
        "apple_pie|baby_back_ribs|baklava|beef_carpaccio|beef_tartare|beet_salad|beignets|bibimbap|bread_"
        "pudding|breakfast_burrito|bruschetta|caesar_salad|cannoli|caprese_salad|carrot_cake|ceviche|chee"
        "secake|cheese_plate|chicken_curry|chicken_quesadilla|chicken_wings|chocolate_cake|chocolate_mous"
        "se|churros|clam_chowder|club_sandwich|crab_cakes|creme_brulee|croque_madame|cup_cakes|deviled_eg"
        "gs|donuts|dumplings|edamame|eggs_benedict|escargots|falafel|filet_mignon|fish_and_chips|foie_gra"
        "s|french_fries|french_onion_soup|french_toast|fried_calamari|fried_rice|frozen_yogurt|garlic_bre"
        "ad|gnocchi|greek_salad|grilled_cheese_sandwich|grilled_salmon|guacamole|gyoza|hamburger|hot_and_"
        "sour_soup|hot_dog|huevos_rancheros|hummus|ice_cream|lasagna|lobster_bisque|lobster_roll_sandwich"
        "|macaroni_and_cheese|macarons|miso_soup|mussels|nachos|omelette|onion_rings|oysters|pad_thai|pae"
        "lla|pancakes|panna_cotta|peking_duck|pho|pizza|pork_chop|poutine|prime_rib|pulled_pork_sandwich|"
        "ramen|ravioli|red_velvet_cake|risotto|samosa|sashimi|scallops|seaweed_salad|shrimp_and_grits|spa"
        "ghetti_bolognese|spaghetti_carbonara|spring_rolls|steak|strawberry_shortcake|sushi|tacos|takoyak"
        "i|tiramisu|tuna_tartare|waffles"
    ),
    "sun397": (
        "abbey|airplane_cabin|airport_terminal|alley|amphitheater|amusement_arcade|amusement_park|anechoi"
        "c_chamber|outdoor apartment_building|indoor apse|aquarium|aqueduct|arch|archive|outdoor arrival_"
        "gate|art_gallery|art_school|art_studio|assembly_line|outdoor athletic_field|public atrium|attic|"
        "auditorium|auto_factory|badlands|indoor badminton_court|baggage_claim|shop bakery|exterior balco"
        "ny|interior balcony|ball_pit|ballroom|bamboo_forest|banquet_hall|bar|barn|barndoor|baseball_fiel"
        "d|basement|basilica|outdoor basketball_court|bathroom|batters_box|bayou|indoor bazaar|outdoor ba"
        "zaar|beach|beauty_salon|bedroom|berth|biology_laboratory|indoor bistro|boardwalk|boat_deck|boath"
        "ouse|bookstore|indoor booth|botanical_garden|indoor bow_window|outdoor bow_window|bowling_alley|"
        "boxing_ring|indoor brewery|bridge|building_facade|bullring|burial_chamber|bus_interior|butchers_"
        "shop|butte|outdoor cabin|cafeteria|campsite|campus|natural canal|urban canal|candy_store|canyon|"
        "backseat car_interior|frontseat car_interior|carrousel|indoor casino|castle|catacomb|indoor cath"
        "edral|outdoor cathedral|indoor cavern|cemetery|chalet|cheese_factory|chemistry_lab|indoor chicke"
        "n_coop|outdoor chicken_coop|childs_room|indoor church|outdoor church|classroom|clean_room|cliff|"
        "indoor cloister|closet|clothing_store|coast|cockpit|coffee_shop|computer_room|conference_center|"
        "conference_room|construction_site|control_room|outdoor control_tower|corn_field|corral|corridor|"
        "cottage_garden|courthouse|courtroom|courtyard|exterior covered_bridge|creek|crevasse|crosswalk|o"
        "ffice cubicle|dam|delicatessen|dentists_office|sand desert|vegetation desert|indoor diner|outdoo"
        "r diner|home dinette|vehicle dinette|dining_car|dining_room|discotheque|dock|outdoor doorway|dor"
        "m_room|driveway|outdoor driving_range|drugstore|electrical_substation|door elevator|interior ele"
        "vator|elevator_shaft|engine_room|indoor escalator|excavation|indoor factory|fairway|fastfood_res"
        "taurant|cultivated field|wild field|fire_escape|fire_station|indoor firing_range|fishpond|indoor"
        " florist_shop|food_court|broadleaf forest|needleleaf forest|forest_path|forest_road|formal_garde"
        "n|fountain|galley|game_room|indoor garage|garbage_dump|gas_station|exterior gazebo|indoor genera"
        "l_store|outdoor general_store|gift_shop|golf_course|indoor greenhouse|outdoor greenhouse|indoor "
        "gymnasium|indoor hangar|outdoor hangar|harbor|hayfield|heliport|herb_garden|highway|hill|home_of"
        "fice|hospital|hospital_room|hot_spring|outdoor hot_tub|outdoor hotel|hotel_room|house|outdoor hu"
        "nting_lodge|ice_cream_parlor|ice_floe|ice_shelf|indoor ice_skating_rink|outdoor ice_skating_rink"
        "|iceberg|igloo|industrial_area|outdoor inn|islet|indoor jacuzzi|indoor jail|jail_cell|jewelry_sh"
        "op|kasbah|indoor kennel|outdoor kennel|kindergarden_classroom|kitchen|kitchenette|outdoor labyri"
        "nth|natural lake|landfill|landing_deck|laundromat|lecture_room|indoor library|outdoor library|ou"
        "tdoor lido_deck|lift_bridge|lighthouse|limousine_interior|living_room|lobby|lock_chamber|locker_"
        "room|mansion|manufactured_home|indoor market|outdoor market|marsh|martial_arts_gym|mausoleum|med"
        "ina|water moat|outdoor monastery|indoor mosque|outdoor mosque|motel|mountain|mountain_snowy|indo"
        "or movie_theater|indoor museum|music_store|music_studio|outdoor nuclear_power_plant|nursery|oast"
        "_house|outdoor observatory|ocean|office|office_building|outdoor oil_refinery|oilrig|operating_ro"
        "om|orchard|outdoor outhouse|pagoda|palace|pantry|park|indoor parking_garage|outdoor parking_gara"
        "ge|parking_lot|parlor|pasture|patio|pavilion|pharmacy|phone_booth|physics_laboratory|picnic_area"
        "|indoor pilothouse|outdoor planetarium|playground|playroom|plaza|indoor podium|outdoor podium|po"
        "nd|establishment poolroom|home poolroom|outdoor power_plant|promenade_deck|indoor pub|pulpit|put"
        "ting_green|racecourse|raceway|raft|railroad_track|rainforest|reception|recreation_room|residenti"
        "al_neighborhood|restaurant|restaurant_kitchen|restaurant_patio|rice_paddy|riding_arena|river|roc"
        "k_arch|rope_bridge|ruin|runway|sandbar|sandbox|sauna|schoolhouse|sea_cliff|server_room|shed|shoe"
        "_shop|shopfront|indoor shopping_mall|shower|skatepark|ski_lodge|ski_resort|ski_slope|sky|skyscra"
        "per|slum|snowfield|squash_court|stable|baseball stadium|football stadium|indoor stage|staircase|"
        "street|subway_interior|platform subway_station|supermarket|sushi_bar|swamp|indoor swimming_pool|"
        "outdoor swimming_pool|indoor synagogue|outdoor synagogue|television_studio|east_asia temple|sout"
        "h_asia temple|indoor tennis_court|outdoor tennis_court|outdoor tent|indoor_procenium theater|ind"
        "oor_seats theater|thriftshop|throne_room|ticket_booth|toll_plaza|topiary_garden|tower|toyshop|ou"
        "tdoor track|train_railway|platform train_station|tree_farm|tree_house|trench|coral_reef underwat"
        "er|utility_room|valley|van_interior|vegetable_garden|veranda|veterinarians_office|viaduct|videos"
        "tore|village|vineyard|volcano|indoor volleyball_court|outdoor volleyball_court|waiting_room|indo"
        "or warehouse|water_tower|block waterfall|fan waterfall|plunge waterfall|watering_hole|wave|wet_b"
        "ar|wheat_field|wind_farm|windmill|barrel_storage wine_cellar|bottle_storage wine_cellar|indoor w"
        "restling_ring|yard|youth_hostel"
    ),
    "aircraft": (
        "707-320|727-200|737-200|737-300|737-400|737-500|737-600|737-700|737-800|737-900|747-100|747-200|"
        "747-300|747-400|757-200|757-300|767-200|767-300|767-400|777-200|777-300|A300B4|A310|A318|A319|A3"
        "20|A321|A330-200|A330-300|A340-200|A340-300|A340-500|A340-600|A380|ATR-42|ATR-72|An-12|BAE 146-2"
        "00|BAE 146-300|BAE-125|Beechcraft 1900|Boeing 717|C-130|C-47|CRJ-200|CRJ-700|CRJ-900|Cessna 172|"
        "Cessna 208|Cessna 525|Cessna 560|Challenger 600|DC-10|DC-3|DC-6|DC-8|DC-9-30|DH-82|DHC-1|DHC-6|D"
        "HC-8-100|DHC-8-300|DR-400|Dornier 328|E-170|E-190|E-195|EMB-120|ERJ 135|ERJ 145|Embraer Legacy 6"
        "00|Eurofighter Typhoon|F-16A/B|F/A-18|Falcon 2000|Falcon 900|Fokker 100|Fokker 50|Fokker 70|Glob"
        "al Express|Gulfstream IV|Gulfstream V|Hawk T1|Il-76|L-1011|MD-11|MD-80|MD-87|MD-90|Metroliner|Mo"
        "del B200|PA-28|SR-20|Saab 2000|Saab 340|Spitfire|Tornado|Tu-134|Tu-154|Yak-42"
    ),
    "eurosat": (
        "Annual Crop Land|Forest|Herbaceous Vegetation Land|Highway or Road|Industrial Buildings|Pasture "
        "Land|Permanent Crop Land|Residential Buildings|River|Sea or Lake"
    ),
}

FINE_GRAINED = tuple(_LISTS)  # flower102, dtd, pets, cars, ucf101, caltech101, food101, sun397, aircraft, eurosat


@functools.cache
def _split(name: str) -> tuple[str, ...]:
    return tuple(_LISTS[name].split("|"))


def classnames(dataset: str) -> list[str]:
    """Class names of a TPT test set in label order.

    Args:
        dataset: a fine-grained set (``FINE_GRAINED``), ``imagenet``/``imagenet_v2``/``imagenet_sketch`` (1000
            classes) or ``imagenet_a``/``imagenet_r`` (200 classes).
    """
    if dataset in _LISTS:
        return list(_split(dataset))
    if dataset in ("imagenet", "imagenet_v2", "imagenet_sketch"):
        return imagenet_classnames()
    if dataset in ("imagenet_a", "imagenet_r"):
        names = imagenet_classnames()
        return [names[i] for i in imagenet_subset_indices(dataset)]
    raise KeyError(f"no class names for {dataset!r}; valid: {sorted(FINE_GRAINED) + sorted(_IMAGENET)}")


_IMAGENET = ("imagenet", "imagenet_a", "imagenet_r", "imagenet_sketch", "imagenet_v2")


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet class names (CLIP's cleaned list, duplicates 'missile' and 'sunglasses' included)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


@functools.cache
def _timm_info(filename: str) -> tuple[str, ...]:
    return tuple(resources.files("timm.data").joinpath("_info", filename).read_text().split())


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids, sorted (= ImageFolder label order of ImageNet's val folders)."""
    return list(_timm_info("imagenet_synsets.txt"))


def imagenet_subset_indices(dataset: str) -> list[int]:
    """Ascending 1k-class indices of the ImageNet-A or ImageNet-R 200-class subset."""
    if dataset not in ("imagenet_a", "imagenet_r"):
        raise KeyError(f"no 200-class subset for {dataset!r} (only imagenet_a, imagenet_r)")
    return [int(i) for i in _timm_info(f"{dataset}_indices.txt")]


def imagenet_subset_wnids(dataset: str) -> list[str]:
    """The 200 WordNet ids of ImageNet-A or ImageNet-R, in label order."""
    wnids = imagenet_wnids()
    return [wnids[i] for i in imagenet_subset_indices(dataset)]


def imagenet_v2_label_order() -> list[int]:
    """ImageNet-V2 folder labels in ImageFolder (string-sorted) order: ``["0", "1", "10", "100", ...]`` as ints.

    ImageFolder sorts the folder names ``0..999`` as strings; position ``i`` of this list is the true 1k class of
    ImageFolder label ``i`` (TPT's ``imagenet_v_mask``).
    """
    return [int(s) for s in sorted(str(i) for i in range(1000))]
