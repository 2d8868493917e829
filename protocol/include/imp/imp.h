/* libimp — umbrella header. Include this one. */
#ifndef IMP_H
#define IMP_H

#include "errors.h"
#include "frame.h"
#include "text.h"
#include "msg.h"
#include "conn.h"

#define IMP_LIB_VERSION "0.1.0"

#endif
