# The ONNX reader's protobuf code, generated at build time by protoc-c from the
# onnx.proto that Debian's libonnx-dev ships (/usr/include/onnx/onnx.proto).
find_program(KILN_PROTOC_C NAMES protoc-c)
pkg_check_modules(PROTOBUF_C IMPORTED_TARGET libprotobuf-c)
find_file(KILN_ONNX_PROTO onnx/onnx.proto PATHS /usr/include)
if(NOT KILN_PROTOC_C OR NOT PROTOBUF_C_FOUND OR NOT KILN_ONNX_PROTO)
  message(FATAL_ERROR "kiln import needs protoc-c, libprotobuf-c and onnx/onnx.proto: "
                      "install protobuf-c-compiler, libprotobuf-c-dev and libonnx-dev "
                      "(scripts/install-deps.sh)")
endif()

get_filename_component(KILN_ONNX_PROTO_DIR ${KILN_ONNX_PROTO} DIRECTORY)
get_filename_component(KILN_ONNX_PROTO_ROOT ${KILN_ONNX_PROTO_DIR} DIRECTORY)
set(KILN_ONNX_GEN ${CMAKE_BINARY_DIR}/gen)
add_custom_command(
  OUTPUT ${KILN_ONNX_GEN}/onnx/onnx.pb-c.c ${KILN_ONNX_GEN}/onnx/onnx.pb-c.h
  COMMAND ${CMAKE_COMMAND} -E make_directory ${KILN_ONNX_GEN}
  COMMAND ${KILN_PROTOC_C} --c_out=${KILN_ONNX_GEN} --proto_path=${KILN_ONNX_PROTO_ROOT}
          ${KILN_ONNX_PROTO}
  DEPENDS ${KILN_ONNX_PROTO}
  COMMENT "protoc-c: onnx.proto")
add_library(kiln_onnx_proto STATIC ${KILN_ONNX_GEN}/onnx/onnx.pb-c.c)
target_include_directories(kiln_onnx_proto SYSTEM PUBLIC ${KILN_ONNX_GEN})
target_link_libraries(kiln_onnx_proto PUBLIC PkgConfig::PROTOBUF_C)
# Generated code: its warnings are protoc-c's, not ours.
target_compile_options(kiln_onnx_proto PRIVATE -w)
