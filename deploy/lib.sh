# deploy/lib.sh — shell functions shared by the deploy/ scripts; sourced (it
# sets no options and runs nothing of its own).
#
#   port_free PORT   exit 0 when a listener could bind 127.0.0.1:PORT now

# Free for a listener, as Kafka and PostgreSQL bind (SO_REUSEADDR):
# connections of a server that was just stopped linger in TIME_WAIT on its
# port, and without the option they would make the port look taken, so the
# server would come back on another one.
port_free() {
    /usr/bin/python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}
