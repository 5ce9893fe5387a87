# Benchmarks of the CSI driver (included by bench/CMakeLists.txt).
if(TARGET stellarium_csi)
  add_executable(csi_clone_latency ${CMAKE_CURRENT_LIST_DIR}/csi_clone_latency.cc)
  target_link_libraries(csi_clone_latency PRIVATE stellarium_csi)
endif()
