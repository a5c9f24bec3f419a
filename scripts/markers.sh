# Sourced by scripts/reports.sh and scripts/ship_release.sh: the step markers of a chain longer than a session. A marker
# is one line, "DATE FINGERPRINT": the fingerprint of the tokenizer the step was done for (its weights without add-ons,
# what latent files record), so a step counts as done only while the same tokenizer comes again.
fingerprint_of() {  # CKPT: a tokenizer in any form load_vae takes
  "${VENV:-.venv}/bin/python" -c "from cat_tokenizer.io import load_vae; print(load_vae('$1').fingerprint(with_head=False))"
}
marked_for() { [ -f "$1" ] && [ "$(cut -d' ' -f2 "$1")" = "$2" ]; }  # MARKER FP: was the step done for this tokenizer?
mark_for() { echo "$(date -Is) $2" > "$1"; }                          # MARKER FP
