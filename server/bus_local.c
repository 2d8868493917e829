/* imd — the in-process delivery bus (bus.h): subscribers are called synchronously. */
#include "bus.h"

#include <stdlib.h>

#include <imp/errors.h>

#define LOCAL_SUBS_MAX 8

typedef struct local_bus {
    ims_bus base;
    struct {
        ims_bus_cb cb;
        void *ud;
    } subs[LOCAL_SUBS_MAX];
    int n;
} local_bus;

static int local_publish(ims_bus *b, ims_bus_event *ev)
{
    local_bus *l = (local_bus *)b;
    if (ev->kind == IMS_BUS_TRANSIENT_MANY && ev->n_users > 0 && !ev->user_ids)
        return IMP_ERR_INVAL;
    for (int i = 0; i < l->n; i++)
        l->subs[i].cb(l->subs[i].ud, ev);
    return 0;
}

static int local_subscribe(ims_bus *b, ims_bus_cb cb, void *ud)
{
    local_bus *l = (local_bus *)b;
    if (!cb || l->n == LOCAL_SUBS_MAX)
        return IMP_ERR_INVAL;
    l->subs[l->n].cb = cb;
    l->subs[l->n].ud = ud;
    l->n++;
    return 0;
}

static void local_free(ims_bus *b)
{
    free(b);
}

static const ims_bus_ops local_ops = {local_publish, local_subscribe, local_free};

ims_bus *ims_bus_local_new(void)
{
    local_bus *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->base.ops = &local_ops;
    return &l->base;
}

int ims_bus_publish(ims_bus *b, ims_bus_event *ev)
{
    return b->ops->publish(b, ev);
}

int ims_bus_subscribe(ims_bus *b, ims_bus_cb cb, void *ud)
{
    return b->ops->subscribe(b, cb, ud);
}

void ims_bus_free(ims_bus *b)
{
    if (b)
        b->ops->free(b);
}
