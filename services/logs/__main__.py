import gc

from services.logs import NAME, ROUTERS, TAGS, create_app
from shared.service import main

# The collector keeps a few hundred thousand lines in memory (each app's recent ones) and makes as many in a
# burst: with the default thresholds (700) the cyclic collector ran a young collection every 700 new objects
# and a full one, over every line kept, several times a second in a burst (0.7 us of each line's ~1.5 us in
# a micro-benchmark). The lines hold no cycles; collections are made rare.
gc.set_threshold(10_000, 10, 10)
main(NAME, ROUTERS, tags=TAGS, create=create_app)
