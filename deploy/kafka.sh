#!/usr/bin/env bash
# deploy/kafka.sh — a private Apache Kafka (KRaft) cluster for testing and
# benchmarking chatvault against the real thing.
#
#   deploy/kafka.sh start [--brokers N]   resolve the jars (first time), format
#                                         (first time) and start N nodes; a
#                                         node of the cluster that is not
#                                         running is started again
#   deploy/kafka.sh stop                  stop the nodes this script started
#   deploy/kafka.sh status                one line per node; exit 0 when all run
#   deploy/kafka.sh env                   shell assignments for eval:
#                                         KAFKA_BOOTSTRAP,
#                                         KAFKA_SASL_SSL_BOOTSTRAP,
#                                         KAFKA_CA_FILE, KAFKA_PIDS, ...
#   deploy/kafka.sh tool CLASS ARGS...    run a Kafka tool from the jars, e.g.
#                                         `tool kafka-topics --list`
#
# The version is pinned in deploy/kafka/pom.xml; Maven resolves it and every
# jar it needs into .kafka/lib/ (git-ignored), once: later starts are offline.
# The cluster lives in $CV_KAFKA_DIR (default .kafka/cluster/, git-ignored):
# N combined nodes (each a KRaft controller and a broker, node ids 1..N, a
# static quorum of all N), each on loopback ports picked at format time below
# the ephemeral range and kept for the cluster's life:
#   PLAINTEXT       the bootstrap address (KAFKA_BOOTSTRAP)
#   SASL_PLAINTEXT  SCRAM-SHA-512 and PLAIN, user KAFKA_SASL_USER with
#                   KAFKA_SASL_PASSWORD (KAFKA_SASL_BOOTSTRAP); librdkafka
#                   before 2.6.1 fails SCRAM against Kafka 4 (README)
#   SASL_SSL        the same mechanisms and user over TLS
#                   (KAFKA_SASL_SSL_BOOTSTRAP)
#   SSL             TLS without SASL (KAFKA_SSL_BOOTSTRAP)
#   CONTROLLER      the quorum
# TLS: at format time openssl makes a private CA (tls/ca.crt, KAFKA_CA_FILE,
# what a client gives as ssl.ca.location) and one broker certificate signed
# by it for DNS:localhost and IP:127.0.0.1, valid 10 years; the brokers read
# key and chain as a PEM keystore (tls/broker.pem). No client certificates.
# A cluster formatted before the TLS listeners existed is refused by start
# and env with a line that says to rm -rf it (its nodes can still be stopped).
# Replication defaults follow N: default and internal-topic replication
# factor min(N, 3), min.insync.replicas min(N, 2). Heaps are capped by
# CV_KAFKA_HEAP (default 448m per node). Start waits CV_KAFKA_START_TIMEOUT
# seconds (default 120) for every node to serve; stop sends SIGTERM to the
# PIDs recorded at start (only if they still run our java) and SIGKILL after
# 60 s. Each failure prints one line: what failed, and where.
#
# To start over: deploy/kafka.sh stop && rm -rf .kafka/cluster
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${CV_KAFKA_CACHE:-$root/.kafka}
dir=${CV_KAFKA_DIR:-$cache/cluster}
case "$dir" in /*) ;; *) dir=$PWD/$dir ;; esac
lib=$cache/lib
pom=$root/deploy/kafka/pom.xml
heap=${CV_KAFKA_HEAP:-448m}
start_timeout=${CV_KAFKA_START_TIMEOUT:-120}
py=/usr/bin/python3
# shellcheck source=deploy/lib.sh
. "$root/deploy/lib.sh"      # port_free

die() { printf 'kafka.sh: %s\n' "$*" >&2; exit 1; }
say() { printf 'kafka.sh: %s\n' "$*" >&2; }

# --- prerequisites ----------------------------------------------------------

apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    say "installing $* with apt-get"
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null 2>&1
}

need_java() {
    if ! command -v java >/dev/null 2>&1; then
        apt_install openjdk-17-jre-headless ||
            die "no java on PATH and apt-get could not install openjdk-17-jre-headless"
    fi
    local v
    v=$(java -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java.specification.version = //p')
    [ "${v%%.*}" -ge 17 ] 2>/dev/null ||
        die "java on PATH ($(command -v java)) is version ${v:-unknown}; Kafka 4 needs 17 or later"
}

# The jars: .kafka/lib/ holds them with a stamp of the pom they came from.
resolve_jars() {
    local want
    want=$(sha1sum "$pom" | cut -c1-40)
    if [ -f "$lib/.pom.sha1" ] && [ "$(cat "$lib/.pom.sha1")" = "$want" ]; then
        return
    fi
    if ! command -v mvn >/dev/null 2>&1; then
        apt_install maven || die "no mvn on PATH and apt-get could not install maven"
    fi
    say "resolving the jars of $pom with Maven into $lib (once)"
    rm -rf "$lib.new"
    mkdir -p "$cache"
    if ! mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$lib.new" >"$cache/mvn.log" 2>&1; then
        die "Maven could not resolve $pom (see $cache/mvn.log: $(grep -m1 -E 'ERROR|Could not' "$cache/mvn.log" | cut -c1-200))"
    fi
    ls "$lib.new"/kafka_2.13-*.jar >/dev/null 2>&1 ||
        die "Maven resolved $pom but $lib.new has no kafka_2.13 jar"
    echo "$want" >"$lib.new/.pom.sha1"
    rm -rf "$lib"
    mv "$lib.new" "$lib"
}

classpath() { printf '%s:' "$lib"/*.jar; }

# java_tool CLASS ARGS...: a Kafka main class from the jars, logging warnings
# to stderr.
java_tool() {
    java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$root/deploy/kafka/log4j2-tools.xml" -cp "$(classpath)" "$@"
}

# --- ports ------------------------------------------------------------------

# A free port below the ephemeral range (32768+): no outgoing connection takes
# it while its node is down, so the address stays valid across restarts.
fixed_port() {
    "$py" - "$@" <<'PY'
import random, socket, sys
taken = {int(p) for p in sys.argv[1:]}
for _ in range(500):
    port = random.randrange(20000, 32000)
    if port in taken:
        continue
    s = socket.socket()
    try:
        s.bind(('127.0.0.1', port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    sys.exit(0)
sys.exit(1)
PY
}

port_open() {
    "$py" -c 'import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

# --- the cluster --------------------------------------------------------------

nodes() { cat "$dir/nodes" 2>/dev/null || echo 0; }
port_of() { sed -n "s/^$2=//p" "$dir/node-$1/ports"; }

# The PID of node I when it runs (our java with our server.properties).
node_pid() {
    local f=$dir/node-$1/pid pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    # grep on the file itself: `tr | grep -q` fails under pipefail whenever
    # grep leaves before tr wrote the whole (long: the classpath) cmdline.
    grep -qaF -- "$dir/node-$1/server.properties" "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# The cluster's CA and broker certificate, in $dir/tls (0700; keys 0600).
make_tls() {
    local tls=$dir/tls
    command -v openssl >/dev/null 2>&1 || die "no openssl on PATH: it makes the TLS listener's certificates (apt-get install openssl)"
    mkdir -p "$tls"
    chmod 700 "$tls"
    # One && chain: set -e does not hold inside the left side of an ||.
    (
        umask 077 && cd "$tls" &&
            openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
                -keyout ca.key -out ca.crt -subj "/CN=chatvault test CA $(date +%s)" \
                -addext basicConstraints=critical,CA:TRUE \
                -addext keyUsage=critical,keyCertSign,cRLSign &&
            openssl req -newkey rsa:2048 -nodes -sha256 -keyout broker.key -out broker.csr \
                -subj /CN=localhost &&
            printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=CA:FALSE' \
                'keyUsage=critical,digitalSignature,keyEncipherment' \
                'extendedKeyUsage=serverAuth' >broker.ext &&
            openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
                -days 3650 -sha256 -extfile broker.ext -out broker.crt &&
            cat broker.key broker.crt ca.crt >broker.pem &&
            chmod 644 ca.crt &&
            openssl verify -CAfile ca.crt broker.crt
    ) >"$tls/openssl.log" 2>&1 ||
        die "making the TLS certificates in $tls failed (see $tls/openssl.log: $(grep -vE '^[-.+*]*$' "$tls/openssl.log" | tail -n1 | cut -c1-200))"
}

# Clusters formatted before the TLS listeners: refused, with what to do.
need_tls_format() {
    [ -f "$dir/tls/ca.crt" ] && grep -q '^sasl_ssl=' "$dir/node-1/ports" 2>/dev/null ||
        die "the cluster in $dir was formatted before deploy/kafka.sh had TLS listeners; deploy/kafka.sh stop && rm -rf $dir to format it again"
}

format_cluster() {
    local n=$1 i voters="" taken=""
    mkdir -p "$dir"
    chmod 700 "$dir"
    for i in $(seq 1 "$n"); do
        mkdir -p "$dir/node-$i"
        local pp sp tp op cp
        pp=$(fixed_port $taken) && taken="$taken $pp" &&
            sp=$(fixed_port $taken) && taken="$taken $sp" &&
            tp=$(fixed_port $taken) && taken="$taken $tp" &&
            op=$(fixed_port $taken) && taken="$taken $op" &&
            cp=$(fixed_port $taken) && taken="$taken $cp" ||
            die "no free loopback port in 20000-32000 for node $i"
        printf 'plaintext=%s\nsasl=%s\nsasl_ssl=%s\nssl=%s\ncontroller=%s\n' \
            "$pp" "$sp" "$tp" "$op" "$cp" >"$dir/node-$i/ports"
        voters="$voters${voters:+,}$i@127.0.0.1:$cp"
    done
    local rf isr
    rf=$(min "$n" 3)
    isr=$(min "$n" 2)
    # The SCRAM user's password, made here and kept in the cluster dir (0600).
    local pw
    pw=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
    umask 077
    printf '%s\n' "$pw" >"$dir/sasl.password"
    umask 022
    make_tls
    local tls=$dir/tls
    for i in $(seq 1 "$n"); do
        cat >"$dir/node-$i/server.properties" <<EOF
# written by deploy/kafka.sh at format time; node $i of $n
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(port_of "$i" plaintext),SASL_PLAINTEXT://127.0.0.1:$(port_of "$i" sasl),SASL_SSL://127.0.0.1:$(port_of "$i" sasl_ssl),SSL://127.0.0.1:$(port_of "$i" ssl),CONTROLLER://127.0.0.1:$(port_of "$i" controller)
advertised.listeners=PLAINTEXT://127.0.0.1:$(port_of "$i" plaintext),SASL_PLAINTEXT://127.0.0.1:$(port_of "$i" sasl),SASL_SSL://127.0.0.1:$(port_of "$i" sasl_ssl),SSL://127.0.0.1:$(port_of "$i" ssl)
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_chatvault="$pw";
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_chatvault="$pw";
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.crt
ssl.client.auth=none
log.dirs=$dir/node-$i/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
unclean.leader.election.enable=false
num.network.threads=2
num.io.threads=4
background.threads=4
log.segment.bytes=67108864
log.retention.hours=168
EOF
    done
    local id
    id=$("$py" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
    for i in $(seq 1 "$n"); do
        java_tool kafka.tools.StorageTool format -t "$id" \
            -c "$dir/node-$i/server.properties" \
            --add-scram "SCRAM-SHA-512=[name=chatvault,password=$pw]" \
            >"$dir/node-$i/format.log" 2>&1 ||
            die "formatting node $i failed (see $dir/node-$i/format.log: $(grep -m1 -iE 'error|exception' "$dir/node-$i/format.log" | cut -c1-200))"
    done
    echo "$id" >"$dir/cluster.id"
    echo "$n" >"$dir/nodes"
    say "formatted a $n-node KRaft cluster in $dir"
}

start_node() {
    local i=$1 nd=$dir/node-$1 p
    for p in $(port_of "$i" plaintext) $(port_of "$i" sasl) $(port_of "$i" sasl_ssl) \
        $(port_of "$i" ssl) $(port_of "$i" controller); do
        port_free "$p" || die "port 127.0.0.1:$p of node $i is taken by another process (see ss -ltnp 'sport = :$p'); stop it or rm -rf $dir"
    done
    # setsid: a node outlives the shell that started it, and a Ctrl-C there.
    setsid java -Xms128m -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$root/deploy/kafka/log4j2-server.xml" \
        -Dkafka.logs.dir="$nd" \
        -cp "$(classpath)" kafka.Kafka "$nd/server.properties" \
        </dev/null >>"$nd/stdout.log" 2>&1 &
    echo $! >"$nd/pid"
}

# Waits until node I serves its plaintext port and logged that it started.
wait_node() {
    local i=$1 nd=$dir/node-$1 deadline=$(($(date +%s) + start_timeout))
    while :; do
        # Not yet its cmdline right after the fork (before setsid execs
        # java, /proc shows this script's): only a pid that is gone failed.
        if ! node_pid "$i" >/dev/null && ! kill -0 "$(cat "$nd/pid" 2>/dev/null)" 2>/dev/null; then
            die "node $i exited while starting (see $nd/server.log and $nd/stdout.log: $(grep -m1 -hE 'ERROR|Exception' "$nd/stdout.log" "$nd/server.log" 2>/dev/null | cut -c1-200))"
        fi
        # "started" logged by this start: past the log's size before it (the
        # whole file when it rolled over since).
        local off size
        off=$(cat "$nd/log.offset" 2>/dev/null || echo 0)
        size=$(stat -c %s "$nd/server.log" 2>/dev/null || echo 0)
        [ "$size" -ge "$off" ] || off=0
        # (Not `tail | grep -q`: grep leaving early makes tail die of SIGPIPE,
        # and pipefail turns a match into a failure once the log is large.)
        if port_open "$(port_of "$i" plaintext)" &&
            [ -n "$(tail -c +"$((off + 1))" "$nd/server.log" 2>/dev/null | grep -m1 'Kafka Server started')" ]; then
            return
        fi
        [ "$(date +%s)" -lt "$deadline" ] ||
            die "node $i (pid $(cat "$nd/pid")) did not become ready in ${start_timeout}s (see $nd/server.log; it is left running: deploy/kafka.sh stop)"
        sleep 0.5
    done
}

bootstrap() {
    local i out="" key=${1:-plaintext}
    for i in $(seq 1 "$(nodes)"); do
        out="$out${out:+,}127.0.0.1:$(port_of "$i" "$key")"
    done
    echo "$out"
}

start() {
    local n=""
    while [ "$#" -gt 0 ]; do
        case "$1" in
        --brokers) n=${2:-}; shift 2 || die "--brokers needs a number" ;;
        --brokers=*) n=${1#*=}; shift ;;
        *) die "start: unknown argument $1 (usage: deploy/kafka.sh start [--brokers N])" ;;
        esac
    done
    if [ -n "$n" ]; then
        [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "--brokers $n: want a number from 1 to 99"
    fi
    need_java
    resolve_jars
    if [ ! -f "$dir/nodes" ]; then
        rm -rf "$dir"
        format_cluster "${n:-1}"
    elif [ -n "$n" ] && [ "$n" != "$(nodes)" ]; then
        die "the cluster in $dir has $(nodes) nodes, not $n; deploy/kafka.sh stop && rm -rf $dir to start over"
    fi
    need_tls_format
    local i started=()
    for i in $(seq 1 "$(nodes)"); do
        node_pid "$i" >/dev/null && continue
        stat -c %s "$dir/node-$i/server.log" >"$dir/node-$i/log.offset" 2>/dev/null ||
            echo 0 >"$dir/node-$i/log.offset"
        start_node "$i"
        started+=("$i")
    done
    for i in "${started[@]}"; do wait_node "$i"; done
    [ "${#started[@]}" = 0 ] || say "started node(s) ${started[*]} of $dir (logs: $dir/node-N/server.log)"
    bootstrap
}

stop() {
    local i pid pids=()
    [ -f "$dir/nodes" ] || return 0
    for i in $(seq 1 "$(nodes)"); do
        if pid=$(node_pid "$i"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    local deadline=$(($(date +%s) + 60))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
                say "node PID $pid did not stop in 60 s; SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    done
    [ "${#pids[@]}" = 0 ] || say "stopped ${#pids[@]} node(s) of $dir"
}

status() {
    [ -f "$dir/nodes" ] || { echo "no cluster in $dir"; return 1; }
    local i pid rc=0
    for i in $(seq 1 "$(nodes)"); do
        if pid=$(node_pid "$i"); then
            echo "node $i running pid=$pid bootstrap=127.0.0.1:$(port_of "$i" plaintext)"
        else
            echo "node $i stopped bootstrap=127.0.0.1:$(port_of "$i" plaintext)"
            rc=1
        fi
    done
    return "$rc"
}

env_out() {
    [ -f "$dir/nodes" ] || die "no cluster in $dir; deploy/kafka.sh start"
    need_tls_format
    local i pid pids=""
    for i in $(seq 1 "$(nodes)"); do
        pid=$(node_pid "$i") || pid=0
        pids="$pids${pids:+ }$pid"
    done
    echo "KAFKA_BOOTSTRAP=$(bootstrap)"
    echo "KAFKA_SASL_BOOTSTRAP=$(bootstrap sasl)"
    echo "KAFKA_SASL_MECHANISMS='SCRAM-SHA-512 PLAIN'"
    echo "KAFKA_SASL_USER=chatvault"
    echo "KAFKA_SASL_PASSWORD=$(cat "$dir/sasl.password")"
    echo "KAFKA_SASL_SSL_BOOTSTRAP=$(bootstrap sasl_ssl)"
    echo "KAFKA_SSL_BOOTSTRAP=$(bootstrap ssl)"
    echo "KAFKA_CA_FILE=$dir/tls/ca.crt"
    echo "KAFKA_PIDS=\"$pids\""
    echo "KAFKA_NODES=$(nodes)"
    echo "KAFKA_DIR=$dir"
    echo "KAFKA_CLASSPATH=$lib/*"
    echo "KAFKA_LOG4J=$root/deploy/kafka/log4j2-tools.xml"
}

# `tool NAME ARGS`: NAME is a script name of Kafka's bin/ (kafka-topics, ...)
# or a main class.
tool() {
    [ "$#" -ge 1 ] || die "tool: name a tool (kafka-topics, kafka-console-consumer, kafka-consumer-groups, ...) or a main class"
    local name=$1 cls
    shift
    case "$name" in
    kafka-topics) cls=org.apache.kafka.tools.TopicCommand ;;
    kafka-console-consumer) cls=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    kafka-console-producer) cls=org.apache.kafka.tools.ConsoleProducer ;;
    kafka-consumer-groups) cls=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    kafka-configs) cls=kafka.admin.ConfigCommand ;;
    kafka-metadata-quorum) cls=org.apache.kafka.tools.MetadataQuorumCommand ;;
    kafka-transactions) cls=org.apache.kafka.tools.TransactionsCommand ;;
    kafka-producer-perf-test) cls=org.apache.kafka.tools.ProducerPerformance ;;
    kafka-storage) cls=kafka.tools.StorageTool ;;
    *.*) cls=$name ;;
    *) die "tool: unknown tool $name" ;;
    esac
    need_java
    resolve_jars
    java_tool "$cls" "$@"
}

cmd=${1:-}
[ "$#" -gt 0 ] && shift
case "$cmd" in
start) start "$@" ;;
stop) stop ;;
status) status ;;
env) env_out ;;
tool) tool "$@" ;;
*)
    echo "usage: deploy/kafka.sh start [--brokers N] | stop | status | env | tool NAME ARGS..." >&2
    exit 2
    ;;
esac
