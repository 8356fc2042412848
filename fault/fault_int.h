/* fault_int.h - what the fault module's files share and nothing else sees. */
#ifndef EP_FAULT_INT_H
#define EP_FAULT_INT_H

#include "fault.h"

/* Makes a copy of `plan` the one fault_decide consults (NULL: none) and zeroes the
 * call counter. Setup/teardown only: not concurrent with fault_decide. */
void fault_decide_install(const struct fault_plan *plan);

#endif
