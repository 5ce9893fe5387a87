# Benchmarks of the node side (included by bench/CMakeLists.txt): stage latency through
# the driver, and the data path (raw file, loop on FUSE, vhost-user-blk in a guest).
if(TARGET stellarium_csi)
  add_executable(node_stage_latency ${CMAKE_CURRENT_LIST_DIR}/node_stage_latency.cc)
  target_link_libraries(node_stage_latency PRIVATE stellarium_csi)
  # Options is filled with designated initializers: the rest keep their defaults.
  target_compile_options(node_stage_latency PRIVATE -Wno-missing-field-initializers)
endif()
