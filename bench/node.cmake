# Benchmarks of the node side (included by bench/CMakeLists.txt): stage latency through
# the driver, and the data path (raw file, loop on FUSE, vhost-user-blk in a guest).
if(TARGET stellarium_csi)
  add_executable(node_stage_latency ${CMAKE_CURRENT_LIST_DIR}/node_stage_latency.cc)
  target_link_libraries(node_stage_latency PRIVATE stellarium_csi)
  # Options is filled with designated initializers: the rest keep their defaults.
  target_compile_options(node_stage_latency PRIVATE -Wno-missing-field-initializers)
endif()

# The data path: node_reader runs every pass (host and QEMU guest, hence -static).
add_executable(node_reader ${CMAKE_CURRENT_LIST_DIR}/node_reader.cc)
target_link_options(node_reader PRIVATE -static)
if(TARGET stellarium_node AND TARGET stellarium_node_guest_util)
  add_executable(node_data_path ${CMAKE_CURRENT_LIST_DIR}/node_data_path.cc)
  target_compile_definitions(node_data_path PRIVATE STELLARIUM_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  target_link_libraries(node_data_path PRIVATE stellarium_node stellarium_node_guest_util
                        stellarium_core)
  add_dependencies(node_data_path node_reader)
endif()

# What node tools see while the driver restarts with its fd holder (real processes).
if(TARGET csi_proto AND TARGET stellarium-csi AND TARGET stellarium_node_test_util)
  add_executable(node_restart_window ${CMAKE_CURRENT_LIST_DIR}/node_restart_window.cc)
  target_link_libraries(node_restart_window PRIVATE csi_proto stellarium_node_test_util)
  target_include_directories(node_restart_window PRIVATE ${PROJECT_SOURCE_DIR})
  add_dependencies(node_restart_window stellarium-csi stellarium-fd-holder)
  target_compile_definitions(node_restart_window PRIVATE
    STELLARIUM_CSI_PATH="$<TARGET_FILE:stellarium-csi>"
    STELLARIUM_FD_HOLDER_PATH="$<TARGET_FILE:stellarium-fd-holder>")
endif()
