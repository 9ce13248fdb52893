// Everything in CGuestAtomics is `static inline` in include/CGuestAtomics.h; a C target needs
// one source file to build.
#include "CGuestAtomics.h"
