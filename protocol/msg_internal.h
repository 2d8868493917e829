/* Private: codec pieces shared between msg.c, list.c and conn.c. */
#ifndef IMP_MSG_INTERNAL_H
#define IMP_MSG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "imp/msg.h"

/* Whole-list validation (IMP-FIELD-009): 0 or IMP_ERR_BAD_LIST. */
int imp_names_check(const uint8_t *p, size_t len);
int imp_headers_check(const uint8_t *p, size_t len);
int imp_stats_check(const uint8_t *p, size_t len);

/* Write a message already validated and sized by imp_msg_encoded_size() (size bytes) into
 * buf; returns size. */
size_t imp_msg_write(const imp_msg *m, uint8_t *buf, size_t size);

#endif
