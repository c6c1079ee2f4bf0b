#!/usr/bin/env bash
# Build .kit/: what `bench/tagging.py --device cuda` needs on a lent GPU machine, which
# has Python 3.12 and torch but no Ray, no torchcodec, no FFmpeg and no network, and
# takes at most 64 MiB along (the working tree included):
#   - Ray, as the venv's version, without its Java jars, RLlib and the dashboard's web
#     client, binaries stripped (~26 MB as tar.xz);
#   - torchcodec for the device's torch, and pure-Python wheels the machine lacks;
#   - FFmpeg's shared libraries built from Debian's source with the audio decoders only
#     (~3.5 MB; decoded patches bit-identical to Debian's FFmpeg on the bench inputs);
#   - the full-length Debian tracks of the bench's --quick set;
#   - run.sh, which installs all that there and runs its arguments.
#
#   tools/gpu_kit.sh          # ~5 min on 2 cores, as root (apt-get)
#   .venv/bin/python bench/tagging.py --quick --generated 4 --models waveform --repeat 1 \
#       --no-compile --device cpu    # makes bench/data/tagging (clips, generated tracks)
# then, on the device, carrying .kit and bench/data/tagging:
#   bash .kit/run.sh python3 bench/tagging.py --device cuda --quick --generated 4 \
#       --full-length '.kit/music/*' --no-compile --results "$OUT/tagging_gpu.json"
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
kit=$repo/.kit
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version() { "$repo/.venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
ray_version=$(version ray)
# torchcodec is built against one torch: 0.11 for the device image's torch 2.11.
torchcodec_version=${TORCHCODEC_VERSION:-0.11.1}

rm -rf "$kit" && mkdir -p "$kit/whl" "$kit/music"

# Wheels for the device's Python 3.12.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$work/whl" \
    "ray==$ray_version" "torchcodec==$torchcodec_version" mido jsonschema \
    jsonschema-specifications referencing rpds-py
mv "$work"/whl/*.whl "$kit/whl/"
mkdir "$work/ray"
(cd "$work/ray" && unzip -q "$kit"/whl/ray-*.whl)
rm "$kit"/whl/ray-*.whl
rm -rf "$work"/ray/ray/{jars,rllib,dashboard/client/build}
strip --strip-unneeded "$work/ray/ray/_raylet.so" "$work/ray/ray/core/src/ray/gcs/gcs_server" \
    "$work/ray/ray/core/src/ray/raylet/raylet"
tar -C "$work/ray" -cJf "$kit/ray.tar.xz" .

# FFmpeg: Debian's source, the audio decoders and demuxers of the inputs raytag reads.
apt-get install -y -q nasm >/dev/null
if ! grep -rqs "deb-src" /etc/apt/sources.list.d/; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
        >/etc/apt/sources.list.d/debian-src.sources
fi
apt-get update -q >/dev/null
(cd "$work" && apt-get source -q --download-only ffmpeg >/dev/null 2>&1 && tar xf ffmpeg_*.orig.tar.xz)
(
    cd "$work"/ffmpeg-*/
    ./configure --prefix="$work/ffmpeg" --enable-shared --disable-static --disable-programs \
        --disable-doc --disable-everything --disable-autodetect --enable-zlib --enable-pic \
        --enable-decoder=mp3,mp3float,mp2,mp2float,mp1,mp1float,vorbis,opus,flac,aac,aac_fixed,aac_latm,alac,wavpack,ape,pcm_s16le,pcm_s16be,pcm_s24le,pcm_s24be,pcm_s32le,pcm_s32be,pcm_f32le,pcm_f32be,pcm_f64le,pcm_u8,pcm_s8,pcm_alaw,pcm_mulaw,adpcm_ms,adpcm_ima_wav \
        --enable-demuxer=mp3,ogg,flac,wav,w64,aac,mov,matroska,aiff,ape,wv,caf \
        --enable-parser=mpegaudio,vorbis,opus,flac,aac,aac_latm \
        --enable-protocol=file,pipe --enable-swresample --enable-swscale --enable-avfilter \
        --enable-avdevice \
        --enable-filter=aresample,aformat,anull,format,scale,null,buffer,buffersink,abuffer,abuffersink,copy,acopy \
        >/dev/null
    make -j"$(nproc)" >/dev/null && make install >/dev/null
)
tar -C "$work" -cJf "$kit/ffmpeg.tar.xz" ffmpeg/lib

# The --quick set's full-length tracks: the first four of the bench's sorted globs.
ls /usr/share/games/asc/music/*.mp3 /usr/share/games/singularity/music/*.ogg | LC_ALL=C sort | head -4 |
    while read -r track; do cp "$track" "$kit/music/"; done

cat >"$kit/run.sh" <<'EOF'
#!/usr/bin/env bash
# On the device: install the kit under /tmp, then run the arguments.
set -euo pipefail
mkdir -p /tmp/site && tar -C /tmp/site -xJf .kit/ray.tar.xz && tar -C /tmp -xJf .kit/ffmpeg.tar.xz
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .kit/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD LD_LIBRARY_PATH=/tmp/ffmpeg/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$@"
EOF
du -sh "$kit"
