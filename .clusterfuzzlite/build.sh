#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz entry point: everything is in fuzz/build.sh.
exec "$SRC/imp/fuzz/build.sh"
