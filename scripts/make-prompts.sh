#!/bin/sh
# Generates the IVR prompts as 8 kHz mono 16-bit WAV with Debian's flite (voice kal,
# which renders 8 kHz; anything else is converted with sox).  No audio is committed: the
# texts below are the source.  Usage: make-prompts.sh [OUTDIR]   (default build/prompts)
# Names: the menu prompts of examples/ivr.lua and examples/pbx.lua, and the digit set of
# the say_digits/say_number verbs (digits/0..19, 20..90 by tens, hundred, thousand,
# million, star, pound).  Exits 0 without writing anything when flite is missing (make deps).
set -eu
out="${1:-build/prompts}"

if ! command -v flite >/dev/null 2>&1; then
  echo "prompts: flite is not installed (make deps); no prompts made" >&2
  exit 0
fi
command -v sox >/dev/null 2>&1 || { echo "prompts: sox is not installed (make deps)" >&2; exit 1; }

mkdir -p "$out/digits"
tmp="$out/.tmp.wav"

# say NAME TEXT: renders TEXT into OUT/NAME.wav, 8 kHz mono 16-bit PCM
say() {
  flite -voice kal -t "$2" -o "$tmp"
  if [ "$(soxi -r "$tmp")" = 8000 ] && [ "$(soxi -c "$tmp")" = 1 ] && [ "$(soxi -b "$tmp")" = 16 ]; then
    mv "$tmp" "$out/$1.wav"
  else
    sox "$tmp" -r 8000 -c 1 -b 16 -e signed-integer "$out/$1.wav"
    rm -f "$tmp"
  fi
}

say welcome "Welcome to the lua sip demo."
say menu "For the echo test press 1, to leave a message press 2, to enter a number press 3, for the operator press 0, to hang up press 9."
say goodbye "Goodbye."
say invalid "Sorry, that is not a valid choice."
say no-input "Sorry, I did not hear your choice."
say echo-test "Echo test. You will hear yourself. Press pound to return to the menu."
say record-after-beep "Please leave your message after the beep. Press pound when you are done."
say message-saved "Your message has been saved. Here it is."
say enter-number "Enter up to four digits, then press pound."
say you-entered "You entered"
say transferring "Please hold while I transfer your call."
say no-operator "Sorry, no operator is available."
say not-available "The person you called is not available. Please leave a message after the beep."

set -- zero one two three four five six seven eight nine ten eleven twelve thirteen \
  fourteen fifteen sixteen seventeen eighteen nineteen
n=0
for w in "$@"; do say "digits/$n" "$w"; n=$((n + 1)); done
for t in 20:twenty 30:thirty 40:forty 50:fifty 60:sixty 70:seventy 80:eighty 90:ninety; do
  say "digits/${t%%:*}" "${t#*:}"
done
say digits/hundred hundred
say digits/thousand thousand
say digits/million million
say digits/star star
say digits/pound pound
touch "$out/.stamp"
echo "prompts: $(find "$out" -name '*.wav' | wc -l) prompts in $out"
