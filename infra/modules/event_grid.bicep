// Retraining trigger: blob-created events on the training-data container go to the retraining function
// (infra/retrain_function/, deployed by function_app.bicep), which runs pipelines/retrain.py. See infra/README.md.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region; a storage system topic must live in its storage account\'s region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Name of the storage account whose events are published.')
param storageAccountName string

@description('Container whose new blobs trigger retraining.')
param trainingDataContainerName string

@description('Container that keeps events Event Grid could not deliver.')
param deadLetterContainerName string

@description('Resource id of the function that receives the events (<function app id>/functions/<name>).')
param retrainFunctionId string

@description('Whether the function\'s code is published: Event Grid checks the function exists when the subscription is created, so the first deployment (before `func azure functionapp publish`) leaves it out.')
param retrainFunctionDeployed bool

var retrainSubscriptionName = 'evgs-${baseName}-retrain'

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

// The topic costs nothing without subscriptions, so it is always there to subscribe to.
resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: 'evgt-${baseName}-storage'
  location: location
  tags: tags
  properties: {
    source: storageAccount.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource retrainSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = if (retrainFunctionDeployed) {
  parent: systemTopic
  name: retrainSubscriptionName
  properties: {
    // By resource id: Event Grid calls the function with the host's own key; no URL or key in the template.
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: retrainFunctionId
        // One event per call: each new file is one retraining decision.
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/${trainingDataContainerName}/blobs/'
      // Training data is chat JSONL; other files (notes, manifests) do not trigger a run.
      subjectEndsWith: '.jsonl'
      isSubjectCaseSensitive: false
      // Only fully committed blobs: these are the calls that finish a write.
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.api'
          values: [
            'PutBlob'
            'PutBlockList'
            'CopyBlob'
            'FlushWithClose'
          ]
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    // Undeliverable events are kept, not dropped: a missed retraining is visible and replayable.
    deadLetterDestination: {
      endpointType: 'StorageBlob'
      properties: {
        resourceId: storageAccount.id
        blobContainerName: deadLetterContainerName
      }
    }
  }
}

output id string = systemTopic.id
output name string = systemTopic.name
output retrainSubscriptionName string = retrainFunctionDeployed ? retrainSubscriptionName : ''
