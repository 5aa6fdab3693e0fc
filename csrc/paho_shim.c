/*
 * Paho C internals the facade uses, reached through weak references: if the Paho C the
 * final binary links (bundled by paho-mqtt-sys, or a system one) lacks a symbol, the
 * reference stays NULL and the call reports that instead of failing the link.
 *
 * The symbols are non-static in Paho C 1.3.16 but not in its public headers:
 *   MQTTAsyncUtils.c: void setRetryLoopInterval(int keepalive)
 *   Socket.c:         int  Socket_interrupt(void)
 *   Thread.c:         int  Thread_signal_evt(evt_type)
 *   MQTTAsync.c:      evt_type send_evt   (the send thread's wake-up event; on Linux a
 *                                          statically initialised structure, valid from
 *                                          the start of the process)
 *   MQTTAsync.c:      MQTTProtocol state   (its first member: the list of every stored
 *                                           outbound or inbound publication)
 * The Rust side calls them only when Paho C reports that version.
 */

#include <stdlib.h>
#include <string.h>

extern void setRetryLoopInterval(int keepalive) __attribute__((weak));
extern int Socket_interrupt(void) __attribute__((weak));

/* Thread.h: evt_type is a pointer to Paho's event structure; only passed through here. */
extern int Thread_signal_evt(void *evt) __attribute__((weak));
extern void *send_evt __attribute__((weak));

/*
 * The members of Paho C 1.3.16's structures that are read or written here, in their
 * order (LinkedList.h: ListElement, List; Clients.h: Publications; MQTTProtocol.h:
 * MQTTProtocol, whose first member is the List of publications).
 */
struct paho_element {
	struct paho_element *prev, *next;
	void *content;
};

struct paho_list {
	struct paho_element *first, *last, *current;
	int count;
	size_t size;
};

struct paho_protocol {
	struct paho_list publications;
};

struct paho_publication {
	char *topic;
	int topiclen;
	char *payload;
	int payloadlen;
	int refcount;
	unsigned char mask[4];
};

extern struct paho_protocol state __attribute__((weak));

/* 1 if called, 0 if the symbol is not linked in. */
int aiomqtt_set_retry_loop_interval(int keepalive)
{
	if (!setRetryLoopInterval)
		return 0;
	setRetryLoopInterval(keepalive);
	return 1;
}

/* 1 if called, 0 if the symbol is not linked in. */
int aiomqtt_socket_interrupt(void)
{
	if (!Socket_interrupt)
		return 0;
	(void)Socket_interrupt();
	return 1;
}

/* Wakes Paho's send thread out of its wait (up to a second) for new commands.
 * 1 if called, 0 if a symbol is not linked in. */
int aiomqtt_wake_sender(void)
{
	if (!Thread_signal_evt || !&send_evt || !send_evt)
		return 0;
	(void)Thread_signal_evt(send_evt);
	return 1;
}

/*
 * Gives the publication Paho stored last its own copies of topic and payload.
 *
 * Why: when the write of a QoS 1/2 PUBLISH fails in MQTTAsync_processCommand (the
 * socket broke), MQTTProtocol_startPublish has already stored the message for a resend
 * with the *command's* topic and payload buffers; Paho then calls the command's failure
 * callback and frees the command with those buffers, so the stored message points at
 * freed memory: a resend on resume sends garbage, and the session's cleanup frees them a
 * second time (glibc aborts the process). Only the QoS 0 branch clears the command's
 * pointers before that.
 *
 * Called from that failure callback (Paho's send thread, Paho's global mutex held, so no
 * other thread changes the list): the stored publication is the last one of the list,
 * appended by this very command. `payloadlen` must match and the publication must be
 * referenced once, or nothing is touched.
 *
 * Returns 1 when detached, 0 when the last publication is not the expected one or memory
 * ran out, -1 when Paho's `state` is not linked in.
 */
int aiomqtt_detach_last_publication(int payloadlen)
{
	struct paho_element *last;
	struct paho_publication *p;
	char *topic, *payload = NULL;
	size_t topic_size;

	if (!&state)
		return -1;
	last = state.publications.last;
	if (!last || !last->content)
		return 0;
	p = last->content;
	if (p->refcount != 1 || p->payloadlen != payloadlen || !p->topic)
		return 0;
	topic_size = strlen(p->topic) + 1;
	if ((topic = malloc(topic_size)) == NULL)
		return 0;
	memcpy(topic, p->topic, topic_size);
	if (p->payload)
	{
		if ((payload = malloc(payloadlen > 0 ? (size_t)payloadlen : 1)) == NULL)
		{
			free(topic);
			return 0;
		}
		if (payloadlen > 0)
			memcpy(payload, p->payload, (size_t)payloadlen);
	}
	p->topic = topic;
	p->payload = payload;
	return 1;
}
