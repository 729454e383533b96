"""Shell completion scripts for ``kubectl-itcare`` (``kubectl itcare completion bash|zsh``):
subcommands, flags, namespaces and credential names, the names listed through kubectl."""

from __future__ import annotations

__all__ = ["completion"]


def completion(shell: str) -> str:
    """A completion script for ``kubectl-itcare``: subcommands, flags, namespaces and
    credential names (listed through kubectl)."""
    commands = "status renew check version completion"
    flags = (
        "-n --namespace -A --all-namespaces -l --selector -o --output --kubeconfig "
        "--context --all --token-url --scope --ca-bundle --from-secret --print-token -h --help"
    )
    if shell == "bash":
        return f"""# bash completion for kubectl-itcare: source <(kubectl-itcare completion bash)
_kubectl_itcare_names() {{ kubectl get "$@" -o name 2>/dev/null | cut -d/ -f2; }}
_kubectl_itcare() {{
  local cur prev
  cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
  if [[ $COMP_CWORD -eq 1 ]]; then
    COMPREPLY=($(compgen -W "{commands}" -- "$cur")); return
  fi
  case $prev in
    -o|--output) COMPREPLY=($(compgen -W "text json yaml" -- "$cur")); return ;;
    -n|--namespace)
      COMPREPLY=($(compgen -W "$(_kubectl_itcare_names namespaces)" -- "$cur")); return ;;
    completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "{flags}" -- "$cur")); return
  fi
  local ns="" i
  for ((i = 1; i < COMP_CWORD; i++)); do
    [[ ${{COMP_WORDS[i]}} == -n || ${{COMP_WORDS[i]}} == --namespace ]] && ns=${{COMP_WORDS[i+1]}}
  done
  local names
  if [[ -n $ns ]]; then
    names=$(_kubectl_itcare_names itcarecredentials -n "$ns")
  else
    names=$(_kubectl_itcare_names clusteritcarecredentials)
  fi
  COMPREPLY=($(compgen -W "$names" -- "$cur"))
}}
complete -F _kubectl_itcare kubectl-itcare
"""
    return f"""#compdef kubectl-itcare
# zsh completion for kubectl-itcare: source <(kubectl-itcare completion zsh)
_kubectl_itcare_names() {{ kubectl get "$@" -o name 2>/dev/null | cut -d/ -f2; }}
_kubectl_itcare() {{
  local -a commands flags names
  commands=({commands})
  flags=({flags})
  if (( CURRENT == 2 )); then
    compadd -a commands; return
  fi
  case ${{words[CURRENT-1]}} in
    -o|--output) compadd text json yaml; return ;;
    -n|--namespace) compadd ${{(f)"$(_kubectl_itcare_names namespaces)"}}; return ;;
    completion) compadd bash zsh; return ;;
  esac
  if [[ ${{words[CURRENT]}} == -* ]]; then
    compadd -a flags; return
  fi
  local ns=${{words[(I)-n|--namespace]}}
  if (( ns )); then
    names=(${{(f)"$(_kubectl_itcare_names itcarecredentials -n ${{words[ns+1]}})"}})
  else
    names=(${{(f)"$(_kubectl_itcare_names clusteritcarecredentials)"}})
  fi
  compadd -a names
}}
compdef _kubectl_itcare kubectl-itcare
"""
