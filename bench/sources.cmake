# Image sources (issue 6): the HTTP import benchmark.
# ~1 GiB qcow2 over HTTP from 127.0.0.1: our import vs `curl -o` vs `qemu-img convert`.
add_executable(http_import_bench ${CMAKE_CURRENT_LIST_DIR}/http_import_bench.cc)
target_link_libraries(http_import_bench PRIVATE stellarium_sources)
target_compile_definitions(http_import_bench PRIVATE
  STELLARIUM_TEST_SERVER="${PROJECT_SOURCE_DIR}/tests/sources/http_server.py")
# With the driver built, the bench also times CreateVolume from the URL through it.
if(TARGET stellarium_csi)
  target_link_libraries(http_import_bench PRIVATE stellarium_csi)
  target_compile_definitions(http_import_bench PRIVATE STELLARIUM_BENCH_CSI=1)
endif()
