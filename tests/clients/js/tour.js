'use strict';
// An unmodified discord.js bot for tests/clients/test_clients.py: `node tour.js <emulator url> <token>`.
// It is pointed at the emulator the documented way (`rest.api`; the gateway URL then comes from
// GET /gateway/bot) and prints one JSON line per step on stdout. Orders arrive as messages in a channel:
// "tour" (send, edit, reply, upload, send and delete, register /tour) and "retry" (one send, for an injected 429);
// the /tour slash command is answered with a deferral and a followup.

const { AttachmentBuilder, Client, Events, GatewayIntentBits } = require('discord.js');

const [base, token] = process.argv.slice(2);

function emit(step, fields = {}) {
  process.stdout.write(`${JSON.stringify({ step, ...fields })}\n`);
}

const client = new Client({
  intents: [GatewayIntentBits.Guilds, GatewayIntentBits.GuildMessages, GatewayIntentBits.MessageContent],
  rest: { api: `${base}/api` },
});

client.once(Events.ClientReady, ready => {
  emit('ready', {
    user: ready.user.id,
    guilds: ready.guilds.cache.map(guild => ({ id: guild.id, name: guild.name })),
    channels: ready.guilds.cache.flatMap(guild => guild.channels.cache).map(c => ({ id: c.id, name: c.name })),
  });
});

async function tour(order) {
  const channel = order.channel;
  const sent = await channel.send('tour: sent');
  emit('sent', { id: sent.id, content: sent.content });
  const edited = await sent.edit('tour: edited');
  emit('edited', { id: edited.id, content: edited.content });
  const reply = await order.reply('tour: reply');
  emit('replied', { id: reply.id, reference: reply.reference?.messageId ?? null });
  const file = new AttachmentBuilder(Buffer.from('uploaded by discord.js'), { name: 'tour.txt' });
  const uploaded = await channel.send({ content: 'tour: upload', files: [file] });
  emit('uploaded', { id: uploaded.id, files: uploaded.attachments.map(a => ({ name: a.name, size: a.size })) });
  const doomed = await channel.send('tour: delete me');
  await doomed.delete();
  emit('deleted', { id: doomed.id });
  const command = await order.guild.commands.create({ name: 'tour', description: 'Answer with a deferral' });
  emit('command', { id: command.id, name: command.name, guild: command.guildId });
}

client.on(Events.MessageCreate, async message => {
  if (message.author.bot) return;
  emit('received', { id: message.id, content: message.content, author: message.author.username });
  try {
    if (message.content === 'tour') {
      await tour(message);
    } else if (message.content === 'retry') {
      const sent = await message.channel.send('tour: after a 429');
      emit('retried', { id: sent.id, content: sent.content });
    }
  } catch (error) {
    emit('error', { during: message.content, error: String(error) });
  }
});

client.on(Events.InteractionCreate, async interaction => {
  if (!interaction.isChatInputCommand()) return;
  emit('interaction', { id: interaction.id, name: interaction.commandName });
  try {
    await interaction.deferReply();
    emit('deferred', { id: interaction.id });
    const followup = await interaction.followUp('tour: followup');
    emit('followup', { id: followup.id, content: followup.content });
  } catch (error) {
    emit('error', { during: interaction.commandName, error: String(error) });
  }
});

client.login(token).catch(error => {
  emit('error', { during: 'login', error: String(error) });
  process.exit(1);
});
