#!/usr/bin/env bash
# Run a local single-node Elasticsearch for development, the demo and the tests.
#
#   scripts/elasticsearch.sh start|stop|status
#
# The first start downloads the integ-test-zip distribution of Elasticsearch from Maven Central
# with Maven (newest 8.x unless ES_VERSION is set) into the cache folder, then reuses it.
# The node listens on 127.0.0.1 only, with security off, so keep it for local use.
#
# Environment:
#   ES_PORT        HTTP port (default 9200)
#   ES_VERSION     Elasticsearch version (default: the newest 8.x already cached, else on Maven Central)
#   ES_HEAP        JVM heap (default 1g)
#   ES_RUN_DIR     data, logs and pid file of this node (default CACHE/run/PORT)
#   LOGLATENT_CACHE_DIR  download cache (default ~/.cache/loglatent, /var/cache/loglatent for root)
#   ES_JAVA_HOME   Java 17 or newer (default: JAVA_HOME, else the java on PATH)
#
# Elasticsearch refuses to run as root, so as root the node runs as the system user loglatent-es,
# which this script creates when it is missing.
set -euo pipefail

ES_PORT="${ES_PORT:-9200}"
ES_HEAP="${ES_HEAP:-1g}"
ES_USER="loglatent-es"
GROUP_ID="org.elasticsearch.distribution.integ-test-zip"
ARTIFACT_ID="elasticsearch"

if [ "$(id -u)" = 0 ]; then
    default_cache="/var/cache/loglatent"
else
    default_cache="${XDG_CACHE_HOME:-$HOME/.cache}/loglatent"
fi
CACHE_DIR="${LOGLATENT_CACHE_DIR:-$default_cache}"
RUN_DIR="${ES_RUN_DIR:-$CACHE_DIR/run/$ES_PORT}"
PID_FILE="$RUN_DIR/elasticsearch.pid"
URL="http://127.0.0.1:$ES_PORT"

die() {
    echo "elasticsearch.sh: $*" >&2
    exit 1
}

answers() {
    curl -fsS --max-time 2 "$URL/_cluster/health" >/dev/null 2>&1
}

running_pid() {
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

newest_cached_version() {
    find "$CACHE_DIR/dist" -maxdepth 1 -mindepth 1 -type d -name 'elasticsearch-8.*' 2>/dev/null \
        | sed 's|.*/elasticsearch-||' | sort -V | tail -n 1 || true
}

# Ask Maven for the newest 8.x release: a version range resolves against the repository metadata.
resolve_newest_version() {
    command -v mvn >/dev/null || die "Maven (mvn) is needed to download Elasticsearch; install it (Debian: apt-get install maven)"
    local work
    work="$(mktemp -d)"
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.loglatent</groupId>
  <artifactId>resolve-elasticsearch</artifactId>
  <version>0</version>
  <dependencies>
    <dependency>
      <groupId>$GROUP_ID</groupId>
      <artifactId>$ARTIFACT_ID</artifactId>
      <version>[8.0.0,8.99999]</version>
      <type>zip</type>
    </dependency>
  </dependencies>
</project>
POM
    mvn -q -B -f "$work/pom.xml" dependency:copy-dependencies -DoutputDirectory="$work/out" >"$work/mvn.log" 2>&1 \
        || { cat "$work/mvn.log" >&2; rm -rf "$work"; die "Maven could not resolve the newest Elasticsearch 8.x; set ES_VERSION"; }
    local zip
    zip="$(ls "$work/out"/elasticsearch-*.zip)"
    local version="${zip##*/elasticsearch-}"
    version="${version%.zip}"
    mkdir -p "$CACHE_DIR/zips"
    mv "$zip" "$CACHE_DIR/zips/elasticsearch-$version.zip"
    rm -rf "$work"
    echo "$version"
}

download() {
    local version="$1"
    local zip="$CACHE_DIR/zips/elasticsearch-$version.zip"
    [ -f "$zip" ] && return 0
    command -v mvn >/dev/null || die "Maven (mvn) is needed to download Elasticsearch; install it (Debian: apt-get install maven)"
    mkdir -p "$CACHE_DIR/zips"
    echo "Downloading Elasticsearch $version (integ-test-zip) with Maven..." >&2
    mvn -q -B dependency:copy -Dartifact="$GROUP_ID:$ARTIFACT_ID:$version:zip" -DoutputDirectory="$CACHE_DIR/zips" >&2 \
        || die "Maven could not download $GROUP_ID:$ARTIFACT_ID:$version:zip"
}

install_distribution() {
    local version="$1"
    local home="$CACHE_DIR/dist/elasticsearch-$version"
    if [ -x "$home/bin/elasticsearch" ]; then
        echo "$home"
        return 0
    fi
    download "$version"
    local staging="$CACHE_DIR/dist/.staging-$$"
    rm -rf "$staging"
    mkdir -p "$staging"
    if command -v unzip >/dev/null; then
        unzip -q "$CACHE_DIR/zips/elasticsearch-$version.zip" -d "$staging"
    else
        python3 -m zipfile -e "$CACHE_DIR/zips/elasticsearch-$version.zip" "$staging"
        chmod +x "$staging/elasticsearch-$version/bin/"*
    fi
    mv "$staging/elasticsearch-$version" "$home"
    rm -rf "$staging"
    echo "$home"
}

find_java() {
    local java_home="${ES_JAVA_HOME:-${JAVA_HOME:-}}"
    if [ -z "$java_home" ]; then
        local java
        java="$(command -v java)" || die "Java 17 or newer is needed; install it (Debian: apt-get install openjdk-17-jre-headless) or set ES_JAVA_HOME"
        java_home="$(dirname "$(dirname "$(readlink -f "$java")")")"
    fi
    [ -x "$java_home/bin/java" ] || die "no java in ES_JAVA_HOME=$java_home"
    echo "$java_home"
}

ensure_user() {
    id "$ES_USER" >/dev/null 2>&1 && return 0
    useradd --system --no-create-home --shell /usr/sbin/nologin "$ES_USER" \
        || die "cannot create the system user $ES_USER that runs Elasticsearch for root"
}

start() {
    if pid="$(running_pid)" && answers; then
        echo "$URL"
        return 0
    fi
    if answers; then
        die "port $ES_PORT is already serving Elasticsearch from another process; set ES_PORT"
    fi

    local version="${ES_VERSION:-}"
    if [ -z "$version" ]; then
        version="$(newest_cached_version)"
        [ -n "$version" ] || version="$(resolve_newest_version)"
    fi
    local home java_home
    home="$(install_distribution "$version")"
    java_home="$(find_java)"

    # Per-node config folder, so several nodes (one per test session) can share one distribution.
    mkdir -p "$RUN_DIR/data" "$RUN_DIR/logs"
    rm -rf "$RUN_DIR/config"
    cp -r "$home/config" "$RUN_DIR/config"

    local -a run_as=()
    if [ "$(id -u)" = 0 ]; then
        ensure_user
        chown -R "$ES_USER" "$RUN_DIR"
        chmod -R a+rX "$home"
        run_as=(runuser -u "$ES_USER" --)
    fi

    "${run_as[@]}" env ES_JAVA_HOME="$java_home" ES_PATH_CONF="$RUN_DIR/config" \
        ES_JAVA_OPTS="-Xms$ES_HEAP -Xmx$ES_HEAP ${ES_JAVA_OPTS:-}" \
        "$home/bin/elasticsearch" -d -p "$PID_FILE" \
        -E "http.port=$ES_PORT" \
        -E network.host=127.0.0.1 \
        -E discovery.type=single-node \
        -E xpack.security.enabled=false \
        -E cluster.routing.allocation.disk.threshold_enabled=false \
        -E "path.data=$RUN_DIR/data" \
        -E "path.logs=$RUN_DIR/logs" \
        >"$RUN_DIR/start.log" 2>&1 \
        || { cat "$RUN_DIR/start.log" >&2; die "Elasticsearch $version did not start; see $RUN_DIR/logs"; }

    for _ in $(seq 1 120); do
        if answers; then
            echo "$URL"
            return 0
        fi
        running_pid >/dev/null || break
        sleep 1
    done
    tail -n 30 "$RUN_DIR/logs/"*.log >&2 2>/dev/null || true
    die "Elasticsearch $version on port $ES_PORT did not respond within 120 s; logs in $RUN_DIR/logs"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "Elasticsearch on port $ES_PORT is not running"
        return 0
    fi
    kill "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { echo "Stopped Elasticsearch on port $ES_PORT"; return 0; }
        sleep 1
    done
    kill -9 "$pid" 2>/dev/null || true
    echo "Killed Elasticsearch on port $ES_PORT after 60 s"
}

status() {
    if running_pid >/dev/null && answers; then
        echo "running: $URL"
        return 0
    fi
    echo "not running on port $ES_PORT"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
