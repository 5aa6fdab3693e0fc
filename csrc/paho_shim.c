/*
 * Paho C internals the facade uses, reached through weak references: if the Paho C the
 * final binary links (bundled by paho-mqtt-sys, or a system one) lacks a symbol, the
 * reference stays NULL and the call reports that instead of failing the link.
 *
 * Both symbols are non-static functions of Paho C 1.3.16 (not in its public headers):
 *   MQTTAsyncUtils.c: void setRetryLoopInterval(int keepalive)
 *   Socket.c:         int  Socket_interrupt(void)
 * The Rust side calls them only when Paho C reports that version.
 */

extern void setRetryLoopInterval(int keepalive) __attribute__((weak));
extern int Socket_interrupt(void) __attribute__((weak));

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
