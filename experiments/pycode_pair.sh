# Sourced by the pycode experiment scripts: the shared pycode pair on the CPU (fp32, 2 threads), the bild
# of the project's venv, and the output folder. BILD_SHARED and BILD_VENV move them.
SHARED="${BILD_SHARED:-../shared}"
BILD="${BILD_VENV:-.venv}/bin/bild"
PAIR=(--small "$SHARED/models/pycode-pair/small" --large "$SHARED/models/pycode-pair/large" --device cpu --dtype float32
      --threads 2)
mkdir -p out
