"""Local stand-ins for what a deployment provides: a broker on loopback and agent processes.

- :mod:`.mosquitto` — :class:`~.mosquitto.LocalMosquitto`, a private broker for tests,
  demos and benchmarks;
- :mod:`.embedded_broker` — the demo's broker: Mosquitto, or amqtt in its own venv;
- :mod:`.agents` — :class:`~.agents.LocalAgentFleet`, real ``edge-agent run`` processes;
- :mod:`.polling` — :func:`~.polling.eventually`, waiting for what the fleet reaches;
- :mod:`.api_thread` — :class:`~.api_thread.ServedApp`, a web app served by uvicorn in a thread.

Nothing is imported here, so importing one helper does not start the others' imports.
"""
