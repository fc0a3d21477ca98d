#!/bin/sh
# One-shot setup of docker/compose.yml: load the bundled sample logs, score them, install the
# Kibana objects and send one digest. Every step can run again without duplicating anything.
set -eu

CONFIG="${LOGLATENT_CONFIG:-/etc/loglatent/config.yaml}"
SAMPLE=/opt/loglatent/samples/loghub-linux/Linux.log

loglatent --config "$CONFIG" load "$SAMPLE" --index loglatent-demo-syslog --year 2005
loglatent --config "$CONFIG" ingest
loglatent --config "$CONFIG" train
# The sample spans 2005-06-09 to 2006-02-28; score all of it so that the dashboard has data.
loglatent --config "$CONFIG" detect --from 2005-06-16 --to 2006-02-28 --limit 10
loglatent --config "$CONFIG" kibana import --url "${LOGLATENT_KIBANA_URL}"
# The digest of a day of the out-of-memory storm, delivered to the mail catcher.
loglatent --config "$CONFIG" digest --day 2005-11-22
