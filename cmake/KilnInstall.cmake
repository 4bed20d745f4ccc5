# Installation (GNUInstallDirs; DESTDIR is honoured by `cmake --install`), the CMake
# package, kiln.pc and the Debian package (`cpack -G DEB`).
#
#   bin/kiln                                  the compiler
#   LIBDIR/kiln/libkiln_runtime.a, libkiln_cli.a   what `kiln build` links models with
#   LIBDIR/kiln/libkiln_mpi.a                 and `kiln build --mpi` (when MPI was found)
#   INCLUDEDIR/kiln/runtime/runtime.h, INCLUDEDIR/kiln/include/kiln/abi.h
#   LIBDIR/cmake/Kiln/                        find_package(Kiln)
#   LIBDIR/pkgconfig/kiln.pc                  pkg-config kiln
#   MANDIR/man1/kiln.1, DATADIR/bash-completion/completions/kiln
#   DATADIR/kiln/models/                      the bundled example models
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(KILN_INSTALL_RUNTIMEDIR ${CMAKE_INSTALL_LIBDIR}/kiln)
set(KILN_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/Kiln)

# An installed kiln finds the runtime archives relative to its own binary, so the
# tree can be moved (DESTDIR, a .deb, another prefix).
file(RELATIVE_PATH KILN_RUNTIME_RELDIR ${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}
     ${CMAKE_INSTALL_PREFIX}/${KILN_INSTALL_RUNTIMEDIR})
target_compile_definitions(kiln_front PRIVATE KILN_RUNTIME_RELDIR="${KILN_RUNTIME_RELDIR}")

install(TARGETS kiln RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS kiln_runtime kiln_cli EXPORT KilnTargets
        ARCHIVE DESTINATION ${KILN_INSTALL_RUNTIMEDIR})
if(TARGET kiln_mpi)
  install(FILES $<TARGET_FILE:kiln_mpi> DESTINATION ${KILN_INSTALL_RUNTIMEDIR})
endif()
install(FILES runtime/runtime.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kiln/runtime)
install(FILES include/kiln/abi.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kiln/include/kiln)
install(FILES docs/kiln.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES scripts/kiln-completion.bash RENAME kiln
        DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions)
install(DIRECTORY models/ DESTINATION ${CMAKE_INSTALL_DATADIR}/kiln/models)

# The exported runtime target carries the build tree's include directory; the
# installed one is the include folder above.
set_property(TARGET kiln_runtime APPEND PROPERTY INTERFACE_INCLUDE_DIRECTORIES
             $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/kiln>)
set_target_properties(kiln_runtime PROPERTIES EXPORT_NAME runtime)
set_target_properties(kiln_cli PROPERTIES EXPORT_NAME cli)
install(EXPORT KilnTargets NAMESPACE Kiln:: DESTINATION ${KILN_INSTALL_CMAKEDIR})
configure_package_config_file(cmake/KilnConfig.cmake.in
  ${CMAKE_BINARY_DIR}/KilnConfig.cmake INSTALL_DESTINATION ${KILN_INSTALL_CMAKEDIR}
  PATH_VARS CMAKE_INSTALL_BINDIR)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/KilnConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/KilnConfig.cmake ${CMAKE_BINARY_DIR}/KilnConfigVersion.cmake
        DESTINATION ${KILN_INSTALL_CMAKEDIR})

# kiln.pc finds the prefix from its own place, so a moved tree still works.
file(RELATIVE_PATH KILN_PC_TO_PREFIX ${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig
     ${CMAKE_INSTALL_PREFIX})
string(REGEX REPLACE "/$" "" KILN_PC_TO_PREFIX "${KILN_PC_TO_PREFIX}")
configure_file(cmake/kiln.pc.in ${CMAKE_BINARY_DIR}/kiln.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/kiln.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# Debian package. kiln build runs cc and links -lopenblas -ljansson, so the
# compiler and those development packages are dependencies too; the shared
# libraries kiln itself loads (LLVM 16, libyaml, ...) come from dpkg-shlibdeps.
set(CPACK_PACKAGE_NAME kiln)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "Kiln developers <kiln@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "ahead-of-time compiler for neural networks described in YAML")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION devel)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "gcc | c-compiler, libc6-dev, binutils, libopenblas-dev, libjansson-dev")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "pkg-config, cmake, bash-completion")
set(CPACK_GENERATOR DEB)
include(CPack)
