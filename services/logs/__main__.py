from services.logs import NAME, ROUTERS, TAGS, create_app
from shared.service import main

main(NAME, ROUTERS, tags=TAGS, create=create_app)
