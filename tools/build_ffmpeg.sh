#!/usr/bin/env bash
# A small static ffmpeg that only decodes audio (about 3 MB instead of imageio-ffmpeg's 170 MB), for the
# serverless bundle: python -m proslushka.bundle --ffmpeg build/ffmpeg/ffmpeg ...
# Fully static (glibc included), so it runs on Lambda's Amazon Linux whatever glibc this machine has.
# LGPL: no --enable-gpl and no external libraries; every decoder below is FFmpeg's own.
# usage: tools/build_ffmpeg.sh [ffmpeg-X.Y.tar.xz] [out_dir]    (default: Debian's source via `apt-get source`)
set -euo pipefail
src=${1:-}
out=$(realpath -m "${2:-build/ffmpeg}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$src" ]; then  # needs a deb-src line in the apt sources
    (cd "$work" && apt-get source --download-only -q ffmpeg >/dev/null)
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
