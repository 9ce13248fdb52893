// CKVM is header-only (request numbers and offsets); this file gives SwiftPM a source to build.
#include "CKVM.h"
