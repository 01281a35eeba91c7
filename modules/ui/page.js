// Parlour's page script (put in <head> by modules/ui/__init__.py): the per-message action bar, the
// in-place editor, the phone drawer and the light/dark choice. Everything the server must do goes
// through one hidden Gradio event (#msg-action-go, modules/ui/chat_actions.py); nothing here reads or
// writes chat data itself.
window.parlour = {
  pending: '',
  editing: null,  // the message whose Edit was sent, until the server answers with its words
  editor: null,  // {index, box}: the open in-place editor

  // -- message actions -------------------------------------------------------------------------------
  send(action) {
    const go = document.getElementById('msg-action-go');
    if (!go) return;
    if (action.act !== 'save') this.closeEditor();  // another action: the chat may change under it
    this.pending = JSON.stringify(action);
    go.click();
  },

  indexOf(bar) {
    const match = bar && bar.className.match(/\bmi-(\d+)\b/);
    return match ? Number(match[1]) : null;
  },

  onAction(button) {
    const bar = button.closest('.msg-actions');
    const index = this.indexOf(bar);
    const act = (button.className.match(/\bact-([a-z]+)\b/) || [])[1];
    if (index === null || !act || button.classList.contains('off')) return;
    if (act === 'copy') return this.copy(bar, button);
    if (act === 'edit') this.editing = index;
    this.send({act, index});
  },

  // The server answered: after an Edit it sent the message's words (#edit-text); open the editor there.
  afterAction(text) {
    const index = this.editing;
    this.editing = null;
    if (index === null) return;
    this.closeEditor();
    const box = document.createElement('div');
    box.className = 'msg-editor';
    const area = document.createElement('textarea');
    area.value = text || '';
    area.rows = Math.min(16, Math.max(3, area.value.split('\n').length + 1));
    area.setAttribute('aria-label', 'Edit the message');
    const row = document.createElement('div');
    row.className = 'msg-editor-buttons';
    const save = this.button('Save', 'msg-editor-save');
    const cancel = this.button('Cancel', 'msg-editor-cancel');
    save.addEventListener('click', () => { this.closeEditor(); this.send({act: 'save', index, text: area.value}); });
    cancel.addEventListener('click', () => this.closeEditor());
    area.addEventListener('keydown', (event) => {
      event.stopPropagation();  // not the page's shortcuts: Escape is not Stop here, Ctrl+Enter saves
      if (event.key === 'Escape') this.closeEditor();
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) save.click();
    });
    row.append(save, cancel);
    box.append(area, row);
    this.editor = {index, box};
    this.placeEditor();
    area.focus();
  },

  // The editor lives inside a bubble that Gradio owns: when the chat is drawn again (a late update of
  // the reply before, a refresh), the bubble is new and the editor is put back in it, words kept.
  placeEditor() {
    const open = this.editor;
    if (!open || open.box.isConnected) return;
    const bar = document.querySelector(`#chatbot .msg-actions.mi-${open.index}`);
    const content = bar && bar.closest('.message-content');
    if (!content) return;
    content.classList.add('editing');
    content.appendChild(open.box);
  },

  closeEditor() {
    this.editor = null;
    document.querySelectorAll('#chatbot .msg-editor').forEach((box) => box.remove());
    document.querySelectorAll('#chatbot .message-content.editing').forEach((c) => c.classList.remove('editing'));
  },

  button(label, className) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = className;
    button.textContent = label;
    return button;
  },

  // What the message says as text: its answer, not the reasoning, the actions or an extension's footer.
  messageText(bar) {
    const content = bar.closest('.message-content');
    const copy = content.cloneNode(true);
    copy.querySelectorAll('.msg-actions, details.reasoning, .reply-footer, button.copy-code, .msg-editor')
      .forEach((node) => node.remove());
    const holder = document.createElement('div');
    holder.style.cssText = 'position:fixed;left:-10000px;top:0;white-space:normal;';
    holder.appendChild(copy);
    document.body.appendChild(holder);  // laid out, so innerText keeps paragraphs and line breaks
    const text = copy.innerText.trim();
    holder.remove();
    return text;
  },

  copy(bar, button) {
    const text = this.messageText(bar);
    const done = () => {
      button.classList.add('done');
      setTimeout(() => button.classList.remove('done'), 1200);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => this.copyByHand(text, done));
    } else {
      this.copyByHand(text, done);  // plain http on another machine (--listen): no clipboard API
    }
  },

  copyByHand(text, done) {
    const area = document.createElement('textarea');
    area.value = text;
    area.style.cssText = 'position:fixed;left:-10000px;top:0;';
    document.body.appendChild(area);
    area.select();
    if (document.execCommand('copy')) done();
    area.remove();
  },

  // -- the phone drawer (chat list and settings) -------------------------------------------------------
  // The class goes on #chat-layout, not <body>: Gradio scopes the page's CSS to its own container, so
  // a media-query rule can only match elements inside it.
  drawer(open) {
    const layout = document.getElementById('chat-layout');
    if (layout) layout.classList.toggle('drawer-open', open);
  },

  drawerOpen() {
    const layout = document.getElementById('chat-layout');
    return Boolean(layout && layout.classList.contains('drawer-open'));
  },

  // -- light / dark, remembered by this browser ----------------------------------------------------------
  applyTheme() {
    const asked = new URL(window.location).searchParams.get('__theme');
    const saved = localStorage.getItem('parlour-theme');
    const dark = asked ? asked !== 'light' : saved ? saved === 'dark' : true;  // dark unless told otherwise
    document.body.classList.toggle('dark', dark);
  },

  toggleTheme() {
    const dark = !document.body.classList.contains('dark');
    document.body.classList.toggle('dark', dark);
    localStorage.setItem('parlour-theme', dark ? 'dark' : 'light');
  },
};

document.addEventListener('click', (event) => {
  const target = event.target;
  if (!target.closest) return;
  const action = target.closest('#chatbot .msg-act');
  if (action) {
    event.preventDefault();
    window.parlour.onAction(action);
    return;
  }
  // any other button of the chat (Send, a chat from the list, ...) closes an open editor unsaved
  if (window.parlour.editor && !target.closest('.msg-editor') && target.closest('#chat-layout button, #chat-list label')) {
    window.parlour.closeEditor();
  }
  // a chat picked from the list, a new chat, or a tap beside the drawer closes it
  if (window.parlour.drawerOpen() &&
      (target.closest('#chat-list label, #new-chat') ||
       (!target.closest('#chat-sidebar') && !target.closest('#drawer-toggle')))) {
    window.parlour.drawer(false);
  }
});

new MutationObserver(() => window.parlour.placeEditor()).observe(document.documentElement,
                                                               {childList: true, subtree: true});

