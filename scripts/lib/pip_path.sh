# shellcheck shell=bash
# pip puts `rustc --version` in its user agent whenever a rustc is on PATH; where that rustc is a
# rustup proxy, the call writes ~/.rustup/settings.toml, so `make setup` wrote to an empty HOME.
# pip runs with this PATH: the caller's, minus the directories that hold a rustc.
path_without_rustc() {
  local dir kept=() dirs
  IFS=: read -ra dirs <<<"$PATH"
  for dir in "${dirs[@]}"; do
    [[ -x "$dir/rustc" ]] || kept+=("$dir")
  done
  (
    IFS=:
    printf '%s' "${kept[*]}"
  )
}
