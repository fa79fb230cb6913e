from services.processes import NAME, ROUTERS, TAGS, create_app
from shared.memory import keep_freed_memory
from shared.service import main

keep_freed_memory()  # exec and run are bulk streams: their message buffers are reused, not faulted in anew
main(NAME, ROUTERS, tags=TAGS, create=create_app)
