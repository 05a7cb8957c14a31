/*
 * smtpsync-primary: the node that owns the settings. For now (until the
 * replication issue adds its admin API and pusher) it runs the node
 * runtime every daemon shares: outbox, sender and submission socket.
 */
#include "node.h"

int main(int argc, char **argv)
{
    return node_main(NODE_ROLE_PRIMARY, argc, argv);
}
