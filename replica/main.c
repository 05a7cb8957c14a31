/*
 * smtpsync-replica: a node that receives its settings from the primary.
 * For now (until the replication issue adds its agent) it runs the node
 * runtime every daemon shares: outbox, sender and submission socket.
 */
#include "node.h"

int main(int argc, char **argv)
{
    return node_main(NODE_ROLE_REPLICA, argc, argv);
}
