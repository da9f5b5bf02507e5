#!/usr/bin/env bash
# A small static ffmpeg that only decodes audio (about 3 MB instead of imageio-ffmpeg's 170 MB), for the
# serverless bundle: the formats libsndfile does not read (m4a/aac, amr, wma, video containers) go through it.
# Fully static (glibc included), so it runs on Lambda's Amazon Linux whatever glibc this machine has.
# LGPL: no --enable-gpl and no external libraries; every decoder below is FFmpeg's own.
# usage: tools/build_ffmpeg.sh [ffmpeg-X.Y.tar.xz] [out_dir]    (default: the distribution's FFmpeg source via apt)
# Needs gcc, make and xz (Debian/Ubuntu: apt-get install build-essential xz-utils); about 4 minutes on 2 cores.
set -euo pipefail
src=${1:-}
out=$(realpath -m "${2:-build/ffmpeg}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for tool in cc make xz; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install build-essential xz-utils)" >&2; exit 2; }
done

if [ -z "$src" ]; then
    # The machine's own apt sources, turned into deb-src ones in a throwaway apt configuration: nothing under
    # /etc/apt or /var/lib/apt is touched, and no hand-edited source line is needed.
    apt="$work/apt"
    mkdir -p "$apt/parts" "$apt/lists/partial"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && sed -n 's/^deb /deb-src /p' "$f" >>"$apt/parts/src.list"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && sed 's/^Types:.*$/Types: deb-src/' "$f" >"$apt/parts/$(basename "$f")"
    done
    opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt/parts" -o "Dir::State::Lists=$apt/lists"
          -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=root" -q)
    apt-get "${opts[@]}" update >/dev/null
    (cd "$work" && apt-get "${opts[@]}" source --download-only ffmpeg >/dev/null)
    src=$(ls "$work"/ffmpeg_*.orig.tar.xz)
fi
tar -xf "$src" -C "$work"
cd "$work"/ffmpeg-*/
decoders=pcm_s16le,pcm_s16be,pcm_s24le,pcm_s32le,pcm_f32le,pcm_f64le,pcm_u8,pcm_alaw,pcm_mulaw,pcm_s16le_planar,\
adpcm_ima_wav,adpcm_ms,gsm,gsm_ms,flac,alac,wavpack,ape,tta,mp3,mp3float,mp2,mp2float,aac,aac_latm,opus,vorbis,\
amrnb,amrwb,wmav1,wmav2,wmapro,ac3,eac3
demuxers=wav,w64,flac,ogg,mp3,aac,mov,matroska,caf,aiff,amr,asf,au,ape,tta,wv,ac3,eac3,pcm_s16le
parsers=aac,aac_latm,flac,mpegaudio,opus,vorbis,ac3,gsm,amr
./configure --prefix="$work/prefix" --disable-everything --disable-autodetect --disable-doc --disable-network \
    --disable-ffplay --disable-ffprobe --disable-avdevice --disable-postproc --disable-swscale --disable-x86asm \
    --enable-static --disable-shared --extra-ldflags=-static --extra-cflags=-O2 \
    --enable-protocol=file,pipe --enable-decoder=$decoders --enable-demuxer=$demuxers --enable-parser=$parsers \
    --enable-encoder=pcm_s16le --enable-muxer=pcm_s16le \
    --enable-filter=abuffer,abuffersink,aformat,anull,aresample,atrim,asetpts >/dev/null
make -j"$(nproc)" ffmpeg >/dev/null 2>&1
strip ffmpeg
mkdir -p "$out"
cp ffmpeg "$out/ffmpeg"
"$out/ffmpeg" -hide_banner -version | head -1
ls -la "$out/ffmpeg"
