# bash completion for kiln (installed as share/bash-completion/completions/kiln).
_kiln() {
  local cur prev cmd
  cur=${COMP_WORDS[COMP_CWORD]}
  prev=${COMP_WORDS[COMP_CWORD-1]}
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "check build profile import weights peak help version" -- "$cur"))
    return
  fi
  cmd=${COMP_WORDS[1]}
  case $prev in
    -o|--output|--weights|--profile-out|--profile-csv)
      COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --from|--to) COMPREPLY=($(compgen -W "torch" -- "$cur")); return ;;
    --dim|--cpu|--name|--steps|--threads|--peak-gflops|--peak-gbs) return ;;
  esac
  local opts files='*.@(yaml|yml)'
  case $cmd in
    check) opts="--dim --print-ir --print-ir-after= --train -O0 -O1 -O2 --time-passes
                 --emit=ir --emit=dot --emit=summary --output --quiet --help" ;;
    build) opts="--output --emit=exe --emit=lib --emit=obj --emit=asm --emit=llvm --emit=cuda
                 --target=cpu --target=cuda --gpu-arch= --cuda-source= --kernel-stats=
                 --cpu= -O0 -O1 -O2 -O3 --time-passes --graph-level= --dim --print-ir-after= --mpi
                 --help" ;;
    profile) opts="--steps --threads --profile-out --profile-csv --peak-gflops --peak-gbs --dim
                   --cpu= -O0 -O1 -O2 -O3 --help" ;;
    import) opts="--output --weights --name --dim --help"; files='*.onnx' ;;
    weights)
      if [ "$COMP_CWORD" -eq 2 ]; then COMPREPLY=($(compgen -W "convert --help" -- "$cur")); return; fi
      opts="--from --to --output --dim --help"; files='*.@(yaml|yml|safetensors)' ;;
    peak) opts="--measure --help" ;;
    *) return ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    [[ ${COMPREPLY[0]} == *= ]] && compopt -o nospace
  else
    compopt -o filenames
    COMPREPLY=($(compgen -f -X "!$files" -- "$cur") $(compgen -d -- "$cur"))
  fi
}
complete -F _kiln kiln
