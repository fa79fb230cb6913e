from services.logs import NAME, ROUTERS
from shared.service import main

main(NAME, ROUTERS)
