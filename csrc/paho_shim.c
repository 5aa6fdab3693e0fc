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
 *   MQTTAsync.c:      mutex_type mqttasync_mutex, socket_mutex (on Linux pointers to
 *                                          statically initialised pthread mutexes)
 *   Thread.c:         int  Paho_thread_lock_mutex(mutex_type), Paho_thread_unlock_mutex
 *   Socket.c:         int  Socket_noPendingWrites(SOCKET)
 *   MQTTAsync.c:      ClientStates* bstate (the version string and the list of clients)
 * The Rust side calls them only when Paho C reports that version.
 */

#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* dup3 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Thread.h: mutex_type is a pointer to a pthread mutex; only passed through here. */
extern void *mqttasync_mutex __attribute__((weak));
extern void *socket_mutex __attribute__((weak));
extern int Paho_thread_lock_mutex(void *mutex) __attribute__((weak));
extern int Paho_thread_unlock_mutex(void *mutex) __attribute__((weak));
extern int Socket_noPendingWrites(int socket) __attribute__((weak));

/*
 * The leading members of Paho C 1.3.16's client structures on Linux (Clients.h:
 * ClientStates, Clients, networkHandles; MQTTTime.h: START_TIME_TYPE is a struct timeval),
 * up to the TLS session of a client's connection.
 */
struct paho_time {
	long sec, usec;
};

struct paho_net {
	int socket;
	struct paho_time last_sent, last_received, last_ping;
	void *ssl;
	void *ctx;
};

struct paho_client {
	char *client_id;
	const char *username;
	int password_len;
	const void *password;
	unsigned int flags;
	struct paho_time ping_due_time;
	struct paho_net net;
};

struct paho_client_states {
	const char *version;
	struct paho_list *clients;
};

extern struct paho_client_states *bstate __attribute__((weak));

/* OpenSSL (linked for Paho C's TLS and this crate's). */
extern int SSL_set_fd(void *ssl, int fd) __attribute__((weak));
/* SSLSocket.c: present only in a Paho C built with TLS, whose networkHandles has the TLS
 * members mirrored above. */
extern int SSLSocket_close(void *net) __attribute__((weak));

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

/* 1 if aiomqtt_take_over_socket can work on this Paho C, 0 if a symbol is missing. */
int aiomqtt_can_take_over_sockets(void)
{
	return Paho_thread_lock_mutex && Paho_thread_unlock_mutex && Socket_noPendingWrites &&
		&mqttasync_mutex && &socket_mutex && mqttasync_mutex && socket_mutex;
}

/* Takes Paho's two socket mutexes in Paho's order (mqttasync_mutex, then socket_mutex, as
 * MQTTAsync_closeOnly takes them). */
static void lock_paho(void)
{
	Paho_thread_lock_mutex(mqttasync_mutex);
	Paho_thread_lock_mutex(socket_mutex);
}

/* Releases what lock_paho took and returns `rc`; errno as it was before, for a -3. */
static int unlock_paho(int rc)
{
	int saved_errno = errno;

	Paho_thread_unlock_mutex(socket_mutex);
	Paho_thread_unlock_mutex(mqttasync_mutex);
	if (rc == -3)
		errno = saved_errno;
	return rc;
}

/*
 * The replacement itself, with both of Paho's mutexes held: checks that `paho_fd` is the
 * socket `inode` (-1 if not) without a partly written packet (0 if it has one), keeps a
 * close-on-exec duplicate of it in `*old_fd` and makes `paho_fd` refer to `fd` (1), or
 * fails with errno set (-3).
 */
static int replace_locked(int paho_fd, unsigned long long inode, int fd, int *old_fd)
{
	struct stat st;
	int old, saved_errno;

	*old_fd = -1;
	if (fstat(paho_fd, &st) != 0 || !S_ISSOCK(st.st_mode) ||
		(unsigned long long)st.st_ino != inode)
		return -1;
	if (!Socket_noPendingWrites(paho_fd))
		return 0;
	if ((old = fcntl(paho_fd, F_DUPFD_CLOEXEC, 0)) == -1)
		return -3;
#if defined(__linux__)
	if (dup3(fd, paho_fd, O_CLOEXEC) == -1)
#else
	if (dup2(fd, paho_fd) == -1)
#endif
	{
		saved_errno = errno;
		close(old);
		errno = saved_errno;
		return -3;
	}
	*old_fd = old;
	return 1;
}

/*
 * Makes Paho's socket descriptor `paho_fd` refer to the connection `fd` refers to, if
 * `paho_fd` still is the socket with inode `inode` and Paho has no partly written packet
 * on it; `*old_fd` is then a new descriptor of the replaced socket, for the caller to
 * see what Paho wrote to it arrive, and to close.
 *
 * Why both mutexes, in Paho's order (mqttasync_mutex, then socket_mutex, as
 * MQTTAsync_closeOnly takes them): every write Paho makes to a socket happens under
 * one of them (MQTTAsync_processCommand and the receive thread's packet handling under
 * the first, Socket_continueWrites under the second), and so does every close. Held,
 * nothing of Paho touches the descriptor while it is replaced. Paho's poll() may be
 * sleeping on the old connection: the caller interrupts it afterwards
 * (Socket_interrupt); poll() takes descriptor numbers afresh on every call.
 *
 * On Linux the replaced descriptor is close-on-exec (dup3): child processes started
 * later do not inherit the broker's connection (Paho's own sockets are inherited).
 *
 * Returns 1 when replaced, 0 when Paho has a write pending on it (try again once it has
 * been drained), -1 when `paho_fd` is not that socket any more (Paho closed it),
 * -2 when a symbol is missing, -3 when dup or dup2 failed (errno is kept).
 */
int aiomqtt_take_over_socket(int paho_fd, unsigned long long inode, int fd, int *old_fd)
{
	if (!aiomqtt_can_take_over_sockets())
		return -2;
	lock_paho();
	return unlock_paho(replace_locked(paho_fd, inode, fd, old_fd));
}

/* 1 if aiomqtt_take_over_tls can work on this Paho C, 0 if a symbol is missing. */
int aiomqtt_can_take_over_tls(void)
{
#if !defined(__linux__)
	return 0; /* the structures above are Linux's */
#endif
	return aiomqtt_can_take_over_sockets() && &bstate && bstate && bstate->version &&
		strcmp(bstate->version, "1.3.16") == 0 && SSL_set_fd && SSLSocket_close;
}

/*
 * As aiomqtt_take_over_socket, and the connection becomes a TLS one for Paho: `ssl`, a
 * TLS session established on `fd` whose application data has not been read, is made the
 * session of the client whose socket is `paho_fd`, reading and writing `paho_fd`.
 * Paho C then chooses TLS for every read and write of that client (WebSocket.c:
 * WebSocket_putdatas, WebSocket_getch, WebSocket_getdata test `net->ssl`), under the
 * same mutexes as for a plain socket, and frees the session when it closes the
 * connection (MQTTAsyncUtils.c: MQTTAsync_closeOnly calls SSLSocket_close: SSL_shutdown,
 * SSL_free). On success the caller's reference to `ssl` is Paho's.
 *
 * The client is found in Paho's list of clients (under mqttasync_mutex, which guards
 * it); it must be the only one on `paho_fd` and have no TLS session or context yet, as
 * a client Paho connected in plain TCP to the private endpoint has.
 *
 * Returns as aiomqtt_take_over_socket, and -4 when no such client is found.
 */
int aiomqtt_take_over_tls(int paho_fd, unsigned long long inode, int fd, void *ssl, int *old_fd)
{
	struct paho_element *e;
	struct paho_client *client = NULL, *c;
	int rc, found = 0;

	*old_fd = -1;
	if (!aiomqtt_can_take_over_tls())
		return -2;
	lock_paho();
	if (bstate->clients)
		for (e = bstate->clients->first; e; e = e->next)
		{
			c = e->content;
			if (c && c->net.socket == paho_fd)
			{
				client = c;
				found++;
			}
		}
	if (found != 1 || client->net.ssl || client->net.ctx)
		rc = -4;
	/* Only the session's own I/O changes: nothing of Paho's uses it yet. */
	else if (SSL_set_fd(ssl, paho_fd) != 1)
		rc = -4;
	else if ((rc = replace_locked(paho_fd, inode, fd, old_fd)) == 1)
		client->net.ssl = ssl;
	return unlock_paho(rc);
}
