# Image sources (issue 6): core/sources/ (stellarium_sources), its tests and its bench.
#
# Wiring lives here until core/CMakeLists.txt adds `add_subdirectory(sources)`,
# builder/CMakeLists.txt links stellarium_sources and tests/CMakeLists.txt lists
# `sources`; each step below is skipped once the owner's file does it.
if(NOT TARGET stellarium_sources)
  add_subdirectory(${PROJECT_SOURCE_DIR}/core/sources ${PROJECT_BINARY_DIR}/core/sources)
endif()
if(TARGET stellarium)
  get_target_property(_stellarium_libs stellarium LINK_LIBRARIES)
  if(NOT "stellarium_sources" IN_LIST _stellarium_libs)
    target_link_libraries(stellarium PRIVATE stellarium_sources)
  endif()
endif()
if(STELLARIUM_BUILD_TESTS AND NOT TARGET sources_tests)
  add_subdirectory(${PROJECT_SOURCE_DIR}/tests/sources ${PROJECT_BINARY_DIR}/tests/sources)
endif()

# ~1 GiB qcow2 over HTTP from 127.0.0.1: our import vs `curl -o` vs `qemu-img convert`.
add_executable(http_import_bench ${CMAKE_CURRENT_LIST_DIR}/http_import_bench.cc)
target_link_libraries(http_import_bench PRIVATE stellarium_sources)
target_compile_definitions(http_import_bench PRIVATE
  STELLARIUM_TEST_SERVER="${PROJECT_SOURCE_DIR}/tests/sources/http_server.py")
