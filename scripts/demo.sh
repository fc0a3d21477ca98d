#!/usr/bin/env bash
# Run the main job on the bundled real logs: start a local Elasticsearch, load the samples,
# build the per-event minute histograms and export them.
set -euo pipefail
cd "$(dirname "$0")/.."

LOGLATENT="${LOGLATENT:-.venv/bin/loglatent}"
CONFIG=demo/config.yaml
INDEX=loglatent-demo-syslog

LOGLATENT_ES_URL="$(scripts/elasticsearch.sh start)"
export LOGLATENT_ES_URL
echo "Elasticsearch: $LOGLATENT_ES_URL"

echo "== Loading /var/log/messages of a RedHat server, June 2005 to February 2006 (loghub)"
"$LOGLATENT" --config "$CONFIG" load samples/loghub-linux/Linux.log --index "$INDEX" --year 2005
echo "== Loading show logging buffers of 15 Cisco IOS-XR lab routers, 2017 (cisco-ie/telemetry)"
"$LOGLATENT" --config "$CONFIG" load samples/cisco-iosxr-lab/*/*.log --index "$INDEX" --year 2017

echo "== Building per-event minute histograms"
"$LOGLATENT" --config "$CONFIG" ingest
"$LOGLATENT" --config "$CONFIG" export-histograms --out demo/output/histograms.npz

echo
echo "Histograms: demo/output/histograms.npz (numpy.load it: counts, host, template, template_id, day)"
echo "Stop Elasticsearch with: ES_PORT=${ES_PORT:-9200} scripts/elasticsearch.sh stop"
