"""Several front-end processes around one engine process (--frontends N): bridge.py carries
the calls between them, remote.py is what a front end serves from, host.py is the engine
processs side and child.py a front ends program."""
