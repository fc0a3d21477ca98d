#!/bin/sh
# Build the Docker Compose CLI plugin from source with Go and install it for the current user, so
# that 'docker compose -f docker/compose.yml config' can check the compose file on a machine
# without Docker's packages. Building takes several minutes; tests/test_docker.py runs the check
# when the plugin is present and skips it otherwise.
set -eu

VERSION="${COMPOSE_VERSION:-v5.6.0}"
PLUGINS="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
go mod init local/compose-build >/dev/null 2>&1
# The module is built as the main module, so that its own replace and exclude directives apply.
SOURCE="$(go mod download -json "github.com/docker/compose/v5@$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
cp -r "$SOURCE" "$WORK/src"
chmod -R u+w "$WORK/src"
cd "$WORK/src"
go build -o "$WORK/docker-compose" ./cmd
mkdir -p "$PLUGINS"
install -m 0755 "$WORK/docker-compose" "$PLUGINS/docker-compose"
echo "Installed $PLUGINS/docker-compose ($VERSION)"
