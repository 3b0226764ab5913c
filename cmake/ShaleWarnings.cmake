# Warnings as errors for Shale's own targets (not for generated protobuf code).
function(shale_target_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
    -Wcast-align -Wunused -Woverloaded-virtual -Wnull-dereference -Wimplicit-fallthrough
    -Wno-missing-field-initializers)
  if(SHALE_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
