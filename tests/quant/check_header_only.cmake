# Lists the headers that <qtool/quant.hpp> pulls in (the compiler's -M output, header-only mode)
# and fails if any is nlohmann/json's, sentencepiece's or Eigen's.
# Usage: cmake -DCXX=... -DINCLUDE=.../include -DSOURCE=.../header_only_main.cpp -P this file
execute_process(
  COMMAND ${CXX} -std=c++20 -DQTOOL_QUANT_HEADER_ONLY -I${INCLUDE} -M ${SOURCE}
  OUTPUT_VARIABLE deps ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the preprocessor failed: ${err}")
endif()
if(NOT deps MATCHES "qtool/quant/quantized.hpp")
  message(FATAL_ERROR "the dependency list does not name quantized.hpp: ${deps}")
endif()
foreach(banned nlohmann sentencepiece Eigen)
  if(deps MATCHES "${banned}")
    message(FATAL_ERROR "<qtool/quant.hpp> pulls in ${banned}: ${deps}")
  endif()
endforeach()
message(STATUS "<qtool/quant.hpp> pulls in neither nlohmann/json, sentencepiece nor Eigen")
