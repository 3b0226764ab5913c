// shale: the admin CLI of Shale. See csi/README.md and `shale --help`.
#include <iostream>

#include "cli/cli_commands.h"

int main(int argc, char** argv) { return shale::cli::RunShale(argc, argv, std::cout, std::cerr); }
