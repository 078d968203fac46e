# Helper functions so every folder declares its targets the same way.
#
# moe_cc_library(NAME name SRCS a.cc b.cc [HDRS ...] [DEPS ...])
#   A static library whose includes are rooted at the repository root.
# moe_cc_binary(NAME name SRCS ... [DEPS ...])
#   An executable in build/bin.
# moe_cc_test(NAME name SRCS ... [DEPS ...] [LABELS cpu|gpu|mpi])
#   A GoogleTest binary registered with ctest through gtest_discover_tests.

set(MOE_WARNINGS -Wall -Wextra -Wno-unused-parameter)

function(moe_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  add_library(${ARG_NAME} STATIC ${ARG_SRCS} ${ARG_HDRS})
  target_include_directories(${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${ARG_NAME} PUBLIC ${ARG_DEPS})
  target_compile_options(${ARG_NAME} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${MOE_WARNINGS}>)
endfunction()

function(moe_cc_binary)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
  target_compile_options(${ARG_NAME} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${MOE_WARNINGS}>)
endfunction()

function(moe_cc_test)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT ARG_LABELS)
    set(ARG_LABELS cpu)
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_compile_options(${ARG_NAME} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${MOE_WARNINGS}>)
  # Tests find ../shared/data and the built tools through these definitions.
  target_compile_definitions(${ARG_NAME} PRIVATE
    MOE_SOURCE_DIR="${PROJECT_SOURCE_DIR}" MOE_BIN_DIR="${CMAKE_RUNTIME_OUTPUT_DIRECTORY}")
  gtest_discover_tests(${ARG_NAME} TEST_PREFIX "${ARG_NAME}." PROPERTIES LABELS "${ARG_LABELS}"
                       DISCOVERY_TIMEOUT 60)
endfunction()
