from services.apps import NAME, ROUTERS, TAGS
from shared.service import main

main(NAME, ROUTERS, tags=TAGS)
