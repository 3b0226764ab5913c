# Generated C++ and gRPC code of a .proto in the source tree.
#
#   shale_grpc_proto_library(TARGET api/control.proto)
#
# Generates into the build tree at the same relative path (build/api/control.pb.h), so the
# generated headers are included as "api/control.pb.h". No shale_target_warnings on these
# libraries: generated code is not held to our warning set.
find_program(GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
function(shale_grpc_proto_library target proto)
  get_filename_component(dir ${proto} DIRECTORY)
  get_filename_component(name ${proto} NAME_WE)
  set(out ${PROJECT_BINARY_DIR}/${dir})
  set(srcs ${out}/${name}.pb.cc ${out}/${name}.grpc.pb.cc)
  set(hdrs ${out}/${name}.pb.h ${out}/${name}.grpc.pb.h)
  add_custom_command(
    OUTPUT ${srcs} ${hdrs}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${out}
    COMMAND protobuf::protoc
      --proto_path=${PROJECT_SOURCE_DIR}
      --cpp_out=${PROJECT_BINARY_DIR}
      --grpc_out=${PROJECT_BINARY_DIR}
      --plugin=protoc-gen-grpc=${GRPC_CPP_PLUGIN}
      ${PROJECT_SOURCE_DIR}/${proto}
    DEPENDS ${PROJECT_SOURCE_DIR}/${proto} protobuf::protoc ${GRPC_CPP_PLUGIN}
    COMMENT "protoc: ${proto} (C++ + gRPC)"
    VERBATIM)
  add_library(${target} STATIC ${srcs} ${hdrs})
  target_include_directories(${target} PUBLIC ${PROJECT_BINARY_DIR})
  target_link_libraries(${target} PUBLIC protobuf::libprotobuf gRPC::grpc++)
endfunction()
