# Writes OUT, a C file defining `const char NAME[]` with the text of FILES in order
# (run as `cmake -DNAME=... -DOUT=... -DFILES=a;b -P KilnEmbed.cmake`). Hex bytes, so
# no character in the templates needs escaping.
set(text "")
foreach(f ${FILES})
  file(READ "${f}" part)
  get_filename_component(base "${f}" NAME)
  string(APPEND text "// ---- templates/${base}\n${part}\n")
endforeach()
string(LENGTH "${text}" len)
file(WRITE "${OUT}.tmp" "${text}")
file(READ "${OUT}.tmp" hex HEX)
file(REMOVE "${OUT}.tmp")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)"
       "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}" "// Generated from templates/*.cuh by cmake/KilnEmbed.cmake.\n"
     "const char ${NAME}[] = {\n${bytes}0x00};\n")
