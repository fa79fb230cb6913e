"""The rack's builder on AWS: the program of the builder image (``python -m services.builder``), run as one ECS
task per build on a container instance, never inside the rack. Standard library only (plus the rack's own
stdlib-only ``shared.archive``/``shared.dockerignore``), so that its image needs nothing but Python.

It reads its task environment (:mod:`services.builder.task`), downloads the build's source from the presigned
URL the rack made, builds each process type's image with the instance's Docker Engine (its socket mounted
into the task) through the Engine API (:mod:`services.builder.engine`), pushes each to the registry with the
authorisation the rack passed, writes its output to stdout (the awslogs driver ships it to the build's log
stream) and reports the images, or its error, to the rack over TLS that trusts only the certificate the rack
named (``RACK_CA``).
"""
