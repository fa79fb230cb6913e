"""What both providers ask of a Docker Engine: this host's (local) or a container instance's over mutual TLS
(aws). A client with typed calls (:mod:`.docker`), processes attached to streams (:mod:`.exec`), CPU and
memory as ``docker stats`` computes them (:mod:`.stats`), TLS with half-close (:mod:`.tls`)."""
